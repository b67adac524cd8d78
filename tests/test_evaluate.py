"""`python -m dvlad.runtime.evaluate RUN_DIR` on runs of envs other than LIBERO (LIBERO's: test_libero.py):
fixed seeds, greedy actions, episodes stepped over env worker processes, the same numbers every time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dvlad.runtime.evaluate import main as evaluate_main
from dvlad.runtime.job import run_job

REPO = Path(__file__).resolve().parents[1]


def _report(capsys, *argv: str) -> tuple[str, dict]:
    assert evaluate_main([*argv, "--json"]) == 0
    line, as_json = capsys.readouterr().out.strip().splitlines()[-2:]
    return line, json.loads(as_json)


@pytest.mark.slow
@pytest.mark.parametrize("env", ["reach", "synthetic"])
def test_a_reach_or_synthetic_run_is_evaluated_from_fixed_seeds_with_greedy_actions(small_spec, tmp_path, capsys,
                                                                                     env):
    """It said it only evaluates LIBERO policies (exit 2)."""
    spec = small_spec("async", train__total_env_steps=64)
    if env == "reach":
        spec.env.name, spec.env.args = "reach", {"image_size": 16, "max_episode_steps": 10}
    run_job(spec, tmp_path, quiet=True)

    line, report = _report(capsys, str(tmp_path), "--episodes", "5", "--envs", "4", "--workers", "2")
    assert line.startswith(f"{env}: success ") and "over 5 episodes from seeds 0..4, greedy" in line, line
    assert (report["env"], report["episodes"]) == (env, 5)  # two waves of 4 envs, the second partial
    assert [e["seed"] for e in report["per_episode"]] == [0, 1, 2, 3, 4]
    assert all(1 <= e["length"] <= (10 if env == "reach" else 24) for e in report["per_episode"])
    assert report["mean_success"] == sum(e["success"] for e in report["per_episode"]) / 5
    assert report["mean_return"] == pytest.approx(sum(e["return"] for e in report["per_episode"]) / 5)
    # the same starts and the most likely actions: the same episodes
    assert _report(capsys, str(tmp_path), "--episodes", "5", "--envs", "4", "--workers", "2")[1] == report
    if env == "reach":  # however they are spread over the envs (synthetic's images count each env's resets)
        assert _report(capsys, str(tmp_path), "--episodes", "5", "--envs", "2", "--workers", "1")[1] == report


def test_libero_options_are_refused_for_other_envs(small_spec, tmp_path):
    import torch

    from dvla.spec import spec_to_dict
    from dvlad.policies.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "checkpoint.safetensors", {"policy.flat": torch.zeros(3)},
                    {"spec": json.dumps(spec_to_dict(small_spec("async")))})
    proc = subprocess.run([sys.executable, "-m", "dvlad.runtime.evaluate", str(tmp_path), "--suite", "libero_goal"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "--suite and --tasks are LIBERO's" in proc.stderr, proc.stderr
