"""The client installs on a laptop: a fresh venv, the package without extras, no torch anywhere."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_client_installs_and_runs_in_a_fresh_venv_without_torch(tmp_path):
    env_dir = tmp_path / "laptop"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                   check=True, timeout=600)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
                               text=True).stdout.lower()
    assert "torch" not in installed and "dvla==" in installed
    code = ("import dvla, dvla.sdk, dvla.cli, dvla.top.app, sys; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'dvlad', 'mujoco'}); "
            "assert not heavy, heavy")
    subprocess.run([python, "-c", code], check=True, timeout=120)
    usage = subprocess.run([env_dir / "bin" / "dvla", "--help"], check=True, capture_output=True, text=True).stdout
    assert "submit" in usage and "top" in usage
