"""A personal daemon (``dvlad --user``) is its owner's alone on every path, root's included: its socket
0600 in a directory only its owner may enter, and every other uid refused before its request is read."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.test_daemon_api import as_user

pytestmark = pytest.mark.slow

STRANGER = "nobody"


@pytest.fixture(autouse=True)
def as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root): root's personal daemon, and a client as another user")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_roots_personal_daemon_without_a_runtime_dir_is_roots_alone(dvlads):
    runtime = Path(f"/tmp/dvlad-{os.geteuid()}")  # where `dvlad --user` goes without $XDG_RUNTIME_DIR
    if runtime.exists():
        pytest.skip(f"{runtime} exists already (another personal daemon's?): left alone")
    d = dvlads(None, user_mode=True, start=False)
    del d.env["XDG_RUNTIME_DIR"]
    d.socket = str(runtime / "dvlad.sock")
    try:
        d.start()
        assert (mode(Path(d.socket)), mode(runtime), runtime.lstat().st_uid) == (0o600, 0o700, 0)
        with pytest.raises(subprocess.CalledProcessError) as unreachable:  # the directory keeps nobody out
            as_user(STRANGER, d.socket, "POST", "/v1/jobs", {"spec": {}})
        assert "PermissionError" in unreachable.value.stderr
        runtime.chmod(0o755)  # were both opened by hand, dvlad itself still refuses another uid
        os.chmod(d.socket, 0o666)
        status, body = as_user(STRANGER, d.socket, "POST", "/v1/jobs", {"spec": {}})
        assert status == 403 and body["reason"].endswith(f"not uid {pwd.getpwnam(STRANGER).pw_uid}"), body
        assert d.jobs() == []
    finally:
        d.stop()
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.parametrize(("owner", "lax"), [(STRANGER, 0o700), ("root", 0o755)])
def test_a_personal_daemon_refuses_a_socket_directory_another_user_owns_or_may_enter(dvlads, owner, lax):
    d = dvlads(None, user_mode=True, start=False)
    runtime = Path(d.socket).parent
    uid = pwd.getpwnam(owner).pw_uid
    os.chown(runtime, uid, -1)
    runtime.chmod(lax)
    with pytest.raises(RuntimeError, match=f"{runtime} is owned by uid {uid} with mode {lax:04o}; .* only in a "
                                           "directory of its own user's"):
        d.start()
    assert not Path(d.socket).exists()
