"""`python -m dvlad.runtime.evaluate RUN_DIR` on runs of envs other than LIBERO (LIBERO's: test_libero.py):
fixed seeds, greedy actions, episodes stepped over env worker processes, the same numbers every time;
the order envs take their starts in, and the progress line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dvlad.runtime.eval_episodes import Start, StartQueue
from dvlad.runtime.eval_progress import EvalProgress
from dvlad.runtime.evaluate import main as evaluate_main
from dvlad.runtime.evaluate import pool_size
from dvlad.runtime.job import run_job
from dvlad.testing import started_lanes, wait_for

REPO = Path(__file__).resolve().parents[1]


def _report(capsys, *argv: str) -> tuple[str, dict]:
    assert evaluate_main([*argv, "--json"]) == 0
    line, _, as_json = capsys.readouterr().out.strip().splitlines()[-3:]
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
    assert (report["env"], report["episodes"], report["envs"]) == (env, 5, 4)  # 4 envs run 5 episodes
    assert [(e["task"], e["start"]) for e in report["per_episode"]] == [(None, i) for i in range(5)]
    assert [(t["name"], t["episodes"]) for t in report["tasks"]] == [(env, 5)]
    assert all(1 <= e["length"] <= (10 if env == "reach" else 24) for e in report["per_episode"])
    assert report["mean_success"] == sum(e["success"] for e in report["per_episode"]) / 5
    assert report["mean_return"] == pytest.approx(sum(e["return"] for e in report["per_episode"]) / 5)
    # the same starts and the most likely actions: the same episodes
    outcomes = _report(capsys, str(tmp_path), "--episodes", "5", "--envs", "4", "--workers", "2")[1]["per_episode"]
    assert outcomes == report["per_episode"]
    if env == "reach":  # however they are spread over the envs (synthetic's images count each env's resets)
        assert _report(capsys, str(tmp_path), "--episodes", "5", "--envs", "1", "--workers", "1")[1]["per_episode"] \
            == report["per_episode"]


def test_libero_options_are_refused_for_other_envs(small_spec, tmp_path):
    from dvla.spec import spec_to_dict
    from dvlad.policies.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "checkpoint.safetensors", {"policy.flat": torch.zeros(3)},
                    {"spec": json.dumps(spec_to_dict(small_spec("async")))})
    proc = subprocess.run([sys.executable, "-m", "dvlad.runtime.evaluate", str(tmp_path), "--suite", "libero_goal"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "--suite and --tasks are LIBERO's" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("flag", "value"), [("--episodes", "99999999999999999999"), ("--episodes", "0"),
                                           ("--max-episode-steps", "4294967296")])
def test_counts_beyond_their_bounds_are_refused_naming_the_flag(small_spec, tmp_path, flag, value):
    """--episodes 99999999999999999999 built a list of that many starts: it hung, eating memory."""
    from dvla.spec import spec_to_dict
    from dvlad.policies.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "checkpoint.safetensors", {"policy.flat": torch.zeros(3)},
                    {"spec": json.dumps(spec_to_dict(small_spec("async")))})
    proc = subprocess.run([sys.executable, "-m", "dvlad.runtime.evaluate", str(tmp_path), flag, value],
                          capture_output=True, text=True, cwd=REPO, timeout=120, preexec_fn=_memory_cap)
    assert proc.returncode == 2 and f"error: {flag} must be from " in proc.stderr, proc.stderr


def _memory_cap() -> None:
    """A child that would build a list without end fails here, not on the machine (its address space: 8 GiB)."""
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


@pytest.mark.slow
@pytest.mark.parametrize("when", ["building its envs", "running episodes"])
def test_ctrl_c_is_one_line_exit_130_and_leaves_no_shared_memory(small_spec, tmp_path, when):
    """Ctrl-C printed a 25-line traceback (and, from an env worker still starting, another) and a
    leaked-shared-memory warning."""
    run_job(small_spec("async", train__total_env_steps=64), tmp_path / "run", quiet=True)
    err = tmp_path / "stderr"
    with err.open("w") as stderr:  # in a session of its own, as a terminal's shell starts it (SIGINT handled)
        proc = subprocess.Popen([sys.executable, "-m", "dvlad.runtime.evaluate", str(tmp_path / "run"), "--episodes",
                                 "100000", "--workers", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if when == "building its envs":  # its worker spawned, still importing
            wait_for(lambda: started_lanes(proc.pid) >= 1, 120, "the env worker")
        else:  # the first progress line: episodes have ended
            wait_for(lambda: "evaluating: " in err.read_text(), 120, "a progress line")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole foreground group
        assert proc.wait(timeout=60) == 130, err.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    said = err.read_text()
    assert said.splitlines()[-1] == "interrupted" and "Traceback" not in said and "leaked" not in said, said
    assert not list(Path("/dev/shm").glob(f"dvla-p-{proc.pid}-*"))  # its segments are named after it


def test_an_env_keeps_its_task_until_none_is_left_then_takes_the_fullest():
    """Switching a LIBERO env's task rebuilds it (5-15 s): an env stays on its task while it has starts."""
    queue = StartQueue([Start(t, i) for t, n in ((0, 3), (1, 1), (2, 2)) for i in range(n)])
    assert [queue.next_for(1), queue.next_for(1), queue.next_for(2)] == [Start(1, 0), Start(0, 0), Start(2, 0)]
    assert [queue.next_for(0), queue.next_for(7), queue.next_for(0)] == [Start(0, 1), Start(0, 2), Start(2, 1)]
    assert queue.next_for(0) is None and len(queue) == 0
    seeds = StartQueue([Start(None, i) for i in range(2)])
    assert [seeds.next_for(None), seeds.next_for(None), seeds.next_for(None)] == [Start(None, 0), Start(None, 1), None]


def test_pool_size_never_exceeds_the_episodes_in_workers_and_divides_among_them():
    assert pool_size(total=40, workers=16, envs=0) == (16, 16)
    assert pool_size(total=5, workers=2, envs=0) == (2, 4)
    assert pool_size(total=3, workers=8, envs=0) == (3, 3)
    assert pool_size(total=100, workers=3, envs=4) == (3, 3)
    assert pool_size(total=100, workers=4, envs=2) == (4, 4)


def test_progress_off_a_terminal_is_a_plain_line_with_success_so_far_and_eta():
    stream = io.StringIO()
    progress = EvalProgress(total=4, stream=stream, every_s=0.0)
    progress.episode(True)
    progress.episode(False)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("evaluating: 1/4 episodes, success 1.000, 0:00 elapsed, ETA 0:00"), lines
    assert lines[1].startswith("evaluating: 2/4 episodes, success 0.500") and len(lines) == 2  # printed once
    assert "\x1b" not in stream.getvalue()  # no control codes in a log
