"""What dvlad writes, as root, for a shared base's holder (dvlad/sharing/holders.py): never through a
link its user planted, and a manifest (it carries the base's CUDA IPC handle, and jobs unpickle it)
that only the jobs allowed to share the base can read."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from dvla.spec import spec_from_dict
from dvlad.sharing import base as shared
from dvlad.sharing.holders import BaseHolders
from tests.test_share_base import LORA_JOB

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root): files of other uids")

NOBODY = pwd.getpwnam("nobody")
STRANGER = 64999
"""A uid (and gid) of no account and no group: anyone else on the machine."""
PLANT = """import os, sys
target, names = sys.argv[1], sys.argv[2:]
while True:  # as fast as it can: a link put back the moment dvlad removed it
    for name in names:
        try:
            os.symlink(target, name)
        except OSError:
            pass
"""


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory other uids can pass through, as /var/lib/dvlad (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="dvlad-bases-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def reads(path: Path, uid: int, gid: int, groups: list[int]) -> bool:
    """Whether a process of ``uid``, ``gid`` and ``groups`` can read ``path``."""
    return subprocess.run(["cat", str(path)], user=uid, group=gid, extra_groups=groups, cwd="/",
                          capture_output=True).returncode == 0


def mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


@pytest.mark.parametrize("share_group", ["", "nogroup"])
def test_root_never_writes_through_a_link_the_holders_user_plants(state_dir, monkeypatch, share_group):
    """A holder's directory is used again by the next holder of its base; its user races a link to a
    root file into every place dvlad writes, again and again, while dvlad starts holders there."""
    victim = state_dir / "victim"
    victim.write_text("root's own\n")
    # the holder's own work does not matter here (and the venv under /root is not nobody's to run):
    # what dvlad writes before it starts does
    monkeypatch.setattr(sys, "executable", shutil.which("true"))
    holders = BaseHolders(state_dir, f"t{os.getpid()}w", share_group)
    spec = spec_from_dict(LORA_JOB)
    job = SimpleNamespace(id=1, user="nobody", groups=["nogroup"], uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)
    holders.acquire(job, spec, [])
    [holder] = holders.holders.values()
    python = shutil.which("python3", path="/usr/bin:/bin")
    planter = subprocess.Popen([python, "-c", PLANT, str(victim), *(str(holder.directory / name) for name in
                                                                   ("spec.toml", "holder.log"))],
                               user=NOBODY.pw_uid, group=NOBODY.pw_gid, cwd="/")
    try:
        for _ in range(20):  # each a holder of the same base in the same directory
            holders.release(1)
            holders.acquire(job, spec, [])
            if victim.read_text() != "root's own\n":
                break
    finally:
        planter.kill()
        planter.wait()
        holders.stop_all()
    assert victim.read_text() == "root's own\n"
    directory = holder.directory
    group = NOBODY.pw_gid  # nogroup: nobody's own group, and the sharing group when it is named
    assert mode(directory) == (0, 0, 0o711)  # dvlad's: nobody may add or swap anything in it
    assert {n: mode(directory / n) for n in ("spec.toml", "holder.log", "out")} == {
        "spec.toml": (NOBODY.pw_uid, group, 0o600), "holder.log": (NOBODY.pw_uid, group, 0o600),
        "out": (NOBODY.pw_uid, group, 0o750 if share_group else 0o700)}


@pytest.mark.slow
@pytest.mark.parametrize("share_group", ["", "lab"])
def test_a_holders_manifest_is_readable_by_the_jobs_that_share_its_base_and_nobody_else(state_dir, share_group):
    """A real holder (of root's job: the venv is root's alone here) writes the manifest that jobs map
    the base from; another uid may not read it, and with a sharing group only its members may."""
    holders = BaseHolders(state_dir, f"t{os.getpid()}m", share_group)
    job = SimpleNamespace(id=1, user="root", groups=["lab"], uid=0, gid=0)
    try:
        manifest = holders.acquire(job, spec_from_dict(LORA_JOB), [])
        shared.wait_for_manifest(manifest, timeout=120)
        assert (mode(manifest.parent)[2], mode(manifest)[2]) == ((0o750, 0o640) if share_group else (0o700, 0o600))
        assert not reads(manifest, STRANGER, STRANGER, [])
        assert reads(manifest, STRANGER, STRANGER, [0]) == bool(share_group)  # a member of the holder's group
    finally:
        holders.stop_all()
