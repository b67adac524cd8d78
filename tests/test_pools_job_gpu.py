"""Two jobs on one GPU, each with its budgets; one made to overflow its activation pool: it fails with
the pool, the cap and the peak, and its neighbour runs to the end and reports its pools (GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

JOB = """
[job]
name = "{name}"
[resources]
device = "cuda"
gpus = 1
share_gpus = true
weight_pool = "2GiB"
activation_pool = "{activation}"
[policy]
name = "transformer-vla"
[policy.args]
preset = "tiny"
patch_size = 16
[env]
name = "synthetic"
num_envs = 8
groups = 2
workers = 2
[env.args]
step_ms = 1.0
image_size = 64
[algo]
update_epochs = 1
minibatches = 2
[pipeline]
segment_steps = 8
[train]
total_env_steps = 1024
resume = false
"""


def start(tmp_path: Path, name: str, activation: str) -> tuple[subprocess.Popen, Path]:
    job = tmp_path / f"{name}.toml"
    job.write_text(JOB.format(name=name, activation=activation))
    out = tmp_path / name
    return subprocess.Popen([sys.executable, "-m", "dvlad.runtime.job", str(job), "--output-dir", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True), out


def test_the_job_over_its_cap_fails_alone_and_the_neighbour_reports_estimate_budget_and_peak(tmp_path):
    over, over_dir = start(tmp_path, "over", "1MiB")
    fine, fine_dir = start(tmp_path, "fine", "4GiB")
    over_err = over.communicate(timeout=300)[1]
    fine_err = fine.communicate(timeout=300)[1]
    assert over.returncode == 1, over_err
    reason = json.loads((over_dir / "summary.json").read_text())["reason"]
    assert "activation pool over its cap: peak " in reason, reason
    assert "> cap 1 MiB (resources.activation_pool)" in reason, reason
    assert fine.returncode == 0, fine_err
    pools = json.loads((fine_dir / "summary.json").read_text())["gpu_memory"]
    assert pools["weight_pool"]["budget"] == 2 << 30 and pools["activation_pool"]["budget"] == 4 << 30
    for pool in pools.values():
        assert 0 < pool["peak"] <= pool["budget"] and pool["estimate"] > 0, pools
    print(json.dumps(pools))
