"""A job's budget as the job runner keeps it, on real jobs: the limits that stop it (env steps, the wall clock
from its start, a success target), the reason it records and prints, a success rate shown only once it means
something, resuming (said, with the success window carried over, nothing trained once the budget is spent),
and a job file's relative paths taken from its folder."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import tomli_w

from dvla import metric_names as m
from dvla.spec import spec_to_dict
from dvlad.runtime.job import run_job
from dvlad.runtime.metrics import read_jsonl
from dvlad.runtime.supervisor import outcome
from dvlad.store import State
from dvlad.testing import started_lanes, wait_for

REPO = Path(__file__).resolve().parents[1]
SUCCEEDS = "always_succeeds_env:make"  # tests/always_succeeds_env.py: success 1.00 from the first episode
RUNNING = types.SimpleNamespace(state=State.RUNNING, reason="")
"""A job as the daemon's supervisor sees one whose process just ended."""


def _succeeding(small_spec, **overrides):
    spec = small_spec("async", env__name=SUCCEEDS, **overrides)
    spec.env.args["success_step"] = 12  # 4 envs of a group end together: 8 episodes every 12 steps
    return spec


def _progress_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


@pytest.mark.slow
def test_a_job_stops_once_its_success_target_has_held_for_its_updates(small_spec, tmp_path):
    """scripts/demo.sh trained for its whole 20 minutes although reach is solved in 2-5."""
    spec = _succeeding(small_spec, train__total_env_steps=1_000_000, train__max_minutes=3.0,
                       train__stop_at_success=0.95, train__stop_after_updates=3)
    summary = run_job(spec, tmp_path, quiet=True)
    assert (summary["status"], summary["stop_reason"]) == ("succeeded", "success target")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    shown = [m.success_rate_of(row) for row in rows]
    first = next(i for i, s in enumerate(shown) if s is not None)  # the first row with enough episodes
    assert all(s == 1.0 for s in shown[first:first + 3])
    assert first + 3 <= len(rows) <= first + 6  # the 3 updates, and at most the ones already under way
    assert summary["env_steps"] < 10_000 and summary["total_env_steps"] == 1_000_000
    assert summary[m.SUCCESS_RATE] == 1.0
    state, reason = outcome(RUNNING, 0, summary)  # what dvla status and dvla jobs then show
    assert (state, reason) == (State.SUCCEEDED, "reached its success target (train.stop_at_success): "
                                                f"{summary['env_steps']:,} of 1,000,000 env steps")


@pytest.mark.slow
def test_success_shows_only_once_enough_episodes_ended_on_the_line_and_in_tensorboard(small_spec, tmp_path,
                                                                                       capsys):
    """The progress line started at `success 1.00` before any learning: the first episodes to end are the
    short, successful ones."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_job(_succeeding(small_spec), tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    lines = _progress_lines(capsys.readouterr().out)
    assert len(lines) == len(rows)
    early = [row for row in rows if row[m.EPISODES] < m.SUCCESS_MIN_EPISODES]
    assert any(row.get(m.SUCCESS_RATE) == 1.0 for row in early)  # the raw window of the first few reads 1.00
    assert len(early) < len(rows)
    for line, row in zip(lines, rows, strict=True):
        assert f" of {int(row[m.EPISODES]):>5d} ep" in line, line  # the episode count, always
        assert ("success   - " in line) == (row[m.EPISODES] < m.SUCCESS_MIN_EPISODES), line
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    written = [event.step for event in events.Scalars(m.METRICS[m.SUCCESS_RATE].tensorboard_tag)]
    assert written == [int(row[m.ENV_STEPS]) for row in rows if row[m.EPISODES] >= m.SUCCESS_MIN_EPISODES]


@pytest.mark.slow
def test_max_minutes_is_wall_clock_from_the_jobs_start(small_spec, tmp_path):
    """The deadline started after set-up, so max_minutes = 1.0 ran for 1m28s-1m55s."""
    spec = small_spec("async", train__total_env_steps=10_000_000, train__max_minutes=0.5)
    started = time.monotonic() - 10  # the job began 10 s ago (for the runner: when its process started)
    summary = run_job(spec, tmp_path, quiet=True, started_at=started)
    ended = time.monotonic() - started
    assert (summary["status"], summary["stop_reason"]) == ("succeeded", "max_minutes")
    assert 30 <= summary["wall_s"] <= ended < 30 + 20, summary  # the limit, and the last update's shutdown
    assert 0 < summary["env_steps"] < summary["total_env_steps"] == 10_000_000
    assert outcome(RUNNING, 0, summary)[1].startswith("reached its wall-clock limit (train.max_minutes): ")


@pytest.mark.slow
def test_a_job_whose_set_up_outlasts_max_minutes_stops_with_that_reason(small_spec, tmp_path):
    spec = small_spec("async", train__total_env_steps=10_000_000, train__max_minutes=0.001)  # 60 ms
    summary = run_job(spec, tmp_path, quiet=True)
    assert (summary["stop_reason"], summary.get("during_setup"), summary["env_steps"]) == ("max_minutes", True, 0)
    assert summary["setup_s"] > 0.06 and (tmp_path / "checkpoint.safetensors").exists()
    assert outcome(RUNNING, 0, summary)[1] == ("reached its wall-clock limit (train.max_minutes) during set-up: "
                                               "0 of 10,000,000 env steps")


@pytest.mark.slow
@pytest.mark.parametrize("lane", ["env worker", "learner"])
def test_a_stop_during_set_up_stops_the_job_trained_nothing_and_wrote_no_checkpoint(small_spec, tmp_path, lane):
    """SIGTERM to a job run by hand while a lane was still starting (importing torch) killed the lane, and
    the job failed: "learner (pid N) killed by signal SIGTERM before it was ready", exit 1."""
    spec = small_spec("async", train__total_env_steps=10**9)
    (tmp_path / "job.toml").write_text(tomli_w.dumps(spec_to_dict(spec)))
    proc = subprocess.Popen([sys.executable, "-m", "dvlad.runtime.job", "job.toml", "--output-dir", "out"],
                            cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:  # the env workers start first, then the learner: signal the group as the lane has just been spawned
        lanes = 1 if lane == "env worker" else spec.env.workers + 1
        wait_for(lambda: started_lanes(proc.pid) >= lanes, 120, f"the job's {lane}")
        os.killpg(proc.pid, signal.SIGTERM)  # as dvla cancel, Slurm and timeout do
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["status"], summary["stop_reason"], summary["during_setup"], summary["trained"],
            summary["checkpoint"], summary["env_steps"]) == ("stopped", "stopped (SIGTERM)", True, False, None, 0)
    assert not (tmp_path / "out" / "checkpoint.safetensors").exists()
    assert out.splitlines()[-1] == ("stopped: stopped by SIGTERM during set-up: 0 of 1,000,000,000 env steps "
                                    "(version 0); nothing trained; no checkpoint written; run it again to resume")


def test_the_runners_clock_starts_with_its_process():
    """Slurm's --time counts from the start: the interpreter's and torch's imports are part of the job."""
    code = "import time; time.sleep(1.0); from dvlad.runtime.job import process_started; " \
           "print(time.monotonic() - process_started())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               cwd=REPO, timeout=120).stdout)
    assert age >= 1.0


@pytest.mark.slow
def test_resuming_says_so_carries_the_success_window_and_a_spent_budget_trains_nothing(small_spec, tmp_path,
                                                                                       capsys):
    """Resuming was silent, its final numbers came from the few episodes after the resume, and an already
    finished run trained one more update."""
    spec = _succeeding(small_spec, train__resume=True)
    first = run_job(spec, tmp_path, quiet=True)
    assert first["stop_reason"] == "env_steps" and first[m.EPISODES] >= m.SUCCESS_MIN_EPISODES
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    checkpoint = (tmp_path / "checkpoint.safetensors").stat().st_mtime_ns
    capsys.readouterr()

    again = run_job(spec, tmp_path, quiet=True)  # its budget is spent: nothing to do
    said = capsys.readouterr().out
    assert said.startswith(f"nothing to train: {tmp_path} completed its env-step budget: "), said
    assert (again["status"], again["stop_reason"], again["trained"]) == ("succeeded", "env_steps", False)
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == len(rows)
    assert (tmp_path / "checkpoint.safetensors").stat().st_mtime_ns == checkpoint
    assert again[m.SUCCESS_RATE] == 1.0 and again[m.EPISODES] == first[m.EPISODES]

    spec.train.total_env_steps *= 2
    second = run_job(spec, tmp_path, quiet=True)
    said = capsys.readouterr().out
    assert f"resuming from {first['env_steps']} env steps (version {first['version']})" in said, said
    resumed = read_jsonl(tmp_path / "metrics.jsonl")[len(rows):]
    assert resumed[0][m.VERSION] == first["version"] + 1 and resumed[0][m.ENV_STEPS] > first["env_steps"]
    assert resumed[0][m.EPISODES] >= first[m.EPISODES]  # the window goes on; it does not start empty
    assert m.success_rate_of(resumed[0]) == 1.0
    assert second[m.EPISODES] > first[m.EPISODES] and second["window_episodes"] >= first["window_episodes"]
    assert second["env_steps"] >= spec.train.total_env_steps and second["stop_reason"] == "env_steps"


@pytest.mark.slow
def test_a_job_file_run_by_hand_takes_its_relative_paths_from_its_folder(small_spec, tmp_path):
    """`python -m dvlad.runtime.job FILE` opened a relative policy.checkpoint from its current directory,
    where `dvla submit` takes it from the file's folder."""
    first = tmp_path / "first"
    run_job(small_spec("async", train__total_env_steps=64), first, quiet=True)
    jobs, elsewhere = tmp_path / "jobs", tmp_path / "elsewhere"
    jobs.mkdir()
    elsewhere.mkdir()
    data = spec_to_dict(small_spec("async", train__total_env_steps=64))
    data["policy"]["checkpoint"] = "../first"  # a run directory, next to the job file's folder
    (jobs / "job.toml").write_text(tomli_w.dumps(data))
    proc = subprocess.run([sys.executable, "-m", "dvlad.runtime.job", "../jobs/job.toml", "--output-dir", "out",
                           "--quiet"], capture_output=True, text=True, cwd=elsewhere, timeout=240)
    assert proc.returncode == 0, proc.stderr
    ran = json.loads((elsewhere / "out" / "job.json").read_text())  # the output dir stays the current one's
    assert Path(ran["policy"]["checkpoint"]).resolve() == (first / "checkpoint.safetensors").resolve()


def test_a_missing_relative_checkpoint_is_refused_with_its_key_line_and_folder(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "job.toml").write_text('[policy]\ncheckpoint = "nowhere/ckpt.safetensors"\n')
    proc = subprocess.run([sys.executable, "-m", "dvlad.runtime.job", str(jobs / "job.toml")], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "job.toml:2:1: policy.checkpoint: " in proc.stderr and str(jobs / "nowhere") in proc.stderr


def test_the_readme_and_the_job_reference_give_the_runners_exit_statuses_and_stop_reasons():
    from dvla import stops
    from dvlad.runtime.job import EXIT_CODES, EXIT_OK, EXIT_STOPPED

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| exit | meaning |"):]
    rows = table[:table.index("\n\n")].splitlines()[2:]
    assert [int(row.split("|")[1]) for row in rows] == sorted(EXIT_CODES)
    jobs = (REPO / "docs" / "jobs.md").read_text()
    section = jobs[jobs.index("## How a job ends"):]
    for reason in stops.STOP_REASONS:  # a limit held: done (0); asked to stop: stopped (3)
        row = next(line for line in section.splitlines() if line.startswith(f'| `"{reason}"` |'))
        assert f"| {EXIT_OK if reason in stops.LIMITS else EXIT_STOPPED} |" in row, row
