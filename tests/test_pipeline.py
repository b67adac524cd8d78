"""The four lanes on real processes: overlap, staleness, versions, crashes, resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dvla.metric_names import LANES
from dvlad.lanes.device import placement_for
from dvlad.lanes.pipeline import JobFailed, Pipeline
from dvlad.lanes.timeline import overlap_seconds
from dvlad.runtime.job import run_job
from dvlad.runtime.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _run(spec, tmp_path: Path) -> tuple[Pipeline, list]:
    rows = []
    pipeline = Pipeline(spec, tmp_path, on_progress=lambda p: rows.append(p))
    pipeline.run()
    return pipeline, rows


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["process", "thread"])
def test_async_lanes_overlap(small_spec, tmp_path, learner):
    pipeline, rows = _run(small_spec("async", pipeline__max_staleness=1, pipeline__learner=learner), tmp_path)
    tl = pipeline.timeline
    # learning runs while envs step and while the actor infers: that is the point of async
    assert overlap_seconds(tl.intervals("learn"), tl.intervals("sample")) > 0
    assert overlap_seconds(tl.intervals("learn"), tl.intervals("infer")) > 0
    # and double buffering: one group is stepped while another is inferred
    assert overlap_seconds(tl.intervals("sample"), tl.intervals("infer")) > 0
    assert rows and all(len(tl.intervals(lane)) > 0 for lane in LANES)


@pytest.mark.slow
def test_sync_lanes_never_overlap(small_spec, tmp_path):
    pipeline, rows = _run(small_spec("sync"), tmp_path)
    tl = pipeline.timeline
    for i, a in enumerate(LANES):
        for b in LANES[i + 1:]:
            assert overlap_seconds(tl.intervals(a), tl.intervals(b)) == 0.0, (a, b)
    assert max(r.values["staleness_max"] for r in rows) == 0


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [1, 2])
def test_staleness_is_bounded_and_reached(small_spec, tmp_path, max_staleness):
    spec = small_spec("async", pipeline__max_staleness=max_staleness, train__total_env_steps=960)
    _, rows = _run(spec, tmp_path)
    worst = max(r.values["staleness_max"] for r in rows)
    assert worst <= max_staleness
    assert worst >= 1  # the actor really ran ahead of the learner
    for r in rows:
        assert sum(r.staleness_hist[max_staleness + 1:]) == 0


@pytest.mark.slow
def test_published_versions_reach_the_actor(small_spec, tmp_path):
    _, rows = _run(small_spec("async"), tmp_path)
    acting = [r.values["acting_version"] for r in rows]
    assert acting[-1] >= len(rows) - 2  # the actor kept up with the learner's versions
    assert acting == sorted(acting)


@pytest.mark.slow
def test_worker_killed_mid_episode_is_replaced_and_job_continues(small_spec, tmp_path):
    spec = small_spec("async", train__total_env_steps=1600, env__step_timeout_s=20.0)
    pipeline = Pipeline(spec, tmp_path)
    killed: list[int] = []

    def kill_a_worker() -> None:
        while pipeline.actor is None or pipeline.actor.env_steps < 200:  # mid-run, mid-episode
            time.sleep(0.05)
        pid = pipeline.pool.pids()[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    threading.Thread(target=kill_a_worker, daemon=True).start()
    last = pipeline.run()
    assert killed, "the worker was never killed"
    assert last["replaced_workers"] >= 1
    assert last["dropped_episodes"] >= 1
    assert last["env_steps"] >= spec.train.total_env_steps


@pytest.mark.slow
def test_job_writes_metrics_checkpoint_and_resumes(small_spec, tmp_path):
    spec = small_spec("async", train__resume=True)
    first = run_job(spec, tmp_path, quiet=True)
    assert first["status"] == "succeeded"
    assert (tmp_path / "checkpoint.safetensors").exists()
    assert (tmp_path / "metrics.csv").read_text().startswith("version,env_steps")
    assert any((tmp_path / "tensorboard").iterdir())
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[-1]["version"] == first["version"]
    spec.train.total_env_steps *= 2
    second = run_job(spec, tmp_path, quiet=True)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    resumed = rows[len(rows) - int(second["version"] - first["version"]):]
    assert resumed[0]["version"] == first["version"] + 1  # continued, not restarted
    assert second["env_steps"] >= spec.train.total_env_steps


def test_cli_refuses_bad_job_file_with_key_and_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[job]\nname = "x"\n\n[env]\nnum_envs = "many"\n')
    proc = subprocess.run([sys.executable, "-m", "dvlad.runtime.job", str(bad)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert "env.num_envs" in proc.stderr and ":5:" in proc.stderr


def test_cli_usage_names_the_command_it_was_started_as():
    from dvlad.testing import PYTHON

    script = subprocess.run([str(PYTHON.parent / "dvlad-job"), "--help"], capture_output=True, text=True, timeout=60)
    module = subprocess.run([sys.executable, "-m", "dvlad.runtime.job", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert script.stdout.startswith("usage: dvlad-job ") and "example: dvlad-job " in script.stdout
    assert module.stdout.startswith("usage: python -m dvlad.runtime.job ")


@pytest.mark.slow
def test_cli_runs_a_job(small_spec, tmp_path):
    import tomli_w

    from dvla.spec import spec_to_dict

    job = tmp_path / "job.toml"
    job.write_text(tomli_w.dumps(spec_to_dict(small_spec("sync"))))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "dvlad.runtime.job", str(job), "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "steps/s" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["status"], summary["stop_reason"], summary["total_env_steps"]) == ("succeeded", "env_steps", 640)
    assert proc.stdout.splitlines()[-1].startswith(  # which limit stopped it, and how far the budget got
        f"done: completed its env-step budget: {summary['env_steps']} of 640 env steps (version ")


@pytest.mark.slow
def test_cli_failure_is_one_line_and_a_failed_summary(small_spec, tmp_path):
    import tomli_w

    from dvla.spec import spec_to_dict

    job = tmp_path / "job.toml"
    # a factory the spec cannot know is missing (an unknown built-in name it refuses itself)
    job.write_text(tomli_w.dumps(spec_to_dict(small_spec("sync", env__name="nosuchpkg.envs:make"))))
    proc = subprocess.run([sys.executable, "-m", "dvlad.runtime.job", str(job), "--output-dir",
                           str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1
    line, = proc.stderr.splitlines()  # an env worker's failure: no traceback, of the worker or of the job
    assert line.startswith("job failed: env 'nosuchpkg.envs:make': worker 0 failed: "
                           "ModuleNotFoundError: No module named 'nosuchpkg'")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["status"], summary["reason"]) == ("failed", line.removeprefix("job failed: "))
    assert "make_env" in summary["traceback"]  # the details are kept, off the terminal


@pytest.mark.slow
def test_grpo_trains_on_whole_episodes_grouped_by_start(small_spec, tmp_path):
    spec = small_spec("async", algo__name="grpo", algo__group_size=2, pipeline__segment_steps=10,
                      train__total_env_steps=800)
    spec.env.args["max_episode_steps"] = 10
    _pipeline, rows = _run(spec, tmp_path)
    assert rows and rows[-1].values["episodes"] >= 40
    # every episode ran whole inside one segment: lengths are at most the limit
    assert rows[-1].values["episode_length"] <= 10
    assert all("v_loss" not in r.values for r in rows)  # no critic
    assert max(r.values["staleness_max"] for r in rows) <= spec.pipeline.max_staleness


@pytest.mark.slow
def test_a_compiled_actor_runs_the_job_and_acts_as_the_eager_policy_scores(small_spec, tmp_path, actor_obs):
    """``pipeline.compile_actor``: the job learns every update, and the compiled forward's
    log-probs and values for the tokens it drew are the eager policy's for the same tokens."""
    rows = []
    pipeline = Pipeline(small_spec("async", pipeline__compile_actor=True), tmp_path,
                        on_progress=lambda p: rows.append(p.values))
    pipeline.run()
    assert [r["version"] for r in rows] == list(range(1, len(rows) + 1))
    actor = pipeline.actor
    assert actor is not None and actor._act._torchdynamo_orig_callable == actor.policy.act  # compiled
    obs = actor_obs(pipeline)
    out = actor.act(obs)
    with torch.no_grad():
        eager = actor.policy.evaluate(obs, out.tokens)
    torch.testing.assert_close(out.logprob, eager.logprob.flatten(1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.value, eager.value, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_row_every_few_updates_covers_all_of_them(small_spec, tmp_path):
    """``train.log_every = 2``: one row per two updates, and its rate and histogram span both."""
    _pipeline, rows = _run(small_spec("async", train__log_every=2, train__total_env_steps=1024), tmp_path)
    assert [r.values["version"] for r in rows] == [2.0 * (i + 1) for i in range(len(rows))] and len(rows) >= 3
    for before, row in itertools.pairwise(rows):
        steps = row.values["env_steps"] - before.values["env_steps"]
        seconds = row.values["time_s"] - before.values["time_s"]
        assert row.values["env_steps_per_s"] == pytest.approx(steps / seconds, rel=1e-6)
        spec = small_spec()
        assert sum(row.staleness_hist) == 2 * spec.pipeline.segment_steps * spec.env.num_envs  # every sample of both


def test_grpo_refuses_segments_shorter_than_an_episode(small_spec, tmp_path):
    spec = small_spec("async", algo__name="grpo", algo__group_size=2, pipeline__segment_steps=8)
    with pytest.raises(ValueError, match="whole episodes"):
        Pipeline(spec, tmp_path).run()


def test_the_learn_lane_is_a_process_unless_the_job_asks_for_a_thread(small_spec):
    assert not placement_for(small_spec("async")).learner_thread
    assert placement_for(small_spec("async", pipeline__learner="thread")).learner_thread


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["process", "thread"])
def test_a_crashing_learner_fails_the_job_with_its_reason(small_spec, tmp_path, learner):
    spec = small_spec("async", policy__name="failing_policy:make", train__total_env_steps=100_000,
                      pipeline__learner=learner)
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match="boom"):
        run_job(spec, tmp_path, quiet=True)
    assert time.monotonic() - t0 < 90  # promptly, not after a timeout


def _stop_a_running_job(small_spec, tmp_path: Path, learner: str, send) -> tuple[subprocess.Popen, str, dict]:
    """Start a job runner with an out-of-reach budget in a session of its own (as a terminal's foreground
    job: env workers and learner in its process group), ``send(proc)`` once it has written 3 rows; its
    exit status, its stdout and summary.json."""
    import tomli_w

    from dvla.spec import spec_to_dict

    job = tmp_path / "job.toml"
    spec = small_spec("async", train__total_env_steps=10_000_000, pipeline__learner=learner)
    job.write_text(tomli_w.dumps(spec_to_dict(spec)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "dvlad.runtime.job", str(job), "--output-dir", str(out),
                             "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and len(read_jsonl(out / "metrics.jsonl")) >= 3):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        send(proc)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 3, stderr  # stopped on request: neither done (0) nor failed (1)
    return proc, stdout, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(("learner", "to"), [("process", "job"), ("thread", "job"), ("process", "group")])
def test_sigterm_checkpoints_and_stops_cleanly(small_spec, tmp_path, learner, to):
    """``group``: SIGTERM to the job's whole process group, as dvlad's cancel and ``timeout`` send it.
    Before: it killed the env workers and the learner too, and the job failed "worker killed by
    signal SIGTERM ... giving up" with no final checkpoint."""
    def send(p: subprocess.Popen) -> None:
        if to == "group":
            os.killpg(p.pid, signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)

    _, stdout, summary = _stop_a_running_job(small_spec, tmp_path, learner, send)
    assert summary["status"] == "stopped" and summary["stop_reason"] == "stopped (SIGTERM)"
    assert summary["env_steps"] < summary["total_env_steps"] == 10_000_000
    assert (tmp_path / "out" / "checkpoint.safetensors").exists()
    assert int(summary["version"]) >= 3
    last = stdout.splitlines()[-1]
    assert last.startswith("stopped: stopped by SIGTERM: ") and "of 10,000,000 env steps" in last, stdout


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_writes_the_summary_as_sigterm_does(small_spec, tmp_path):
    """Ctrl-C (SIGINT to the terminal's whole foreground group) exited 1 with no summary.json."""
    _, stdout, summary = _stop_a_running_job(small_spec, tmp_path, "process",
                                             lambda p: os.killpg(p.pid, signal.SIGINT))
    assert summary["status"] == "stopped" and summary["stop_reason"] == "interrupted (Ctrl-C)"
    assert summary["checkpoint"] == str(tmp_path / "out" / "checkpoint.safetensors")
    assert int(summary["version"]) >= 3 and 0 < summary["env_steps"] < 10_000_000
    assert stdout.splitlines()[-1].startswith("stopped: interrupted by Ctrl-C: "), stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_refused_rather_than_silently_run_on_cpu(small_spec, tmp_path):
    with pytest.raises(ValueError, match="torch sees no GPU"):
        Pipeline(small_spec("async", resources__device="cuda"), tmp_path).run()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_bf16_on_a_cpu_is_refused_and_fp32_is_what_a_cpu_runs(small_spec):
    with pytest.raises(ValueError, match="needs a GPU"):
        placement_for(small_spec("async", resources__precision="bf16"))
    for precision in ("auto", "fp32"):
        placement = placement_for(small_spec("async", resources__precision=precision))
        assert placement.actor_dtype == torch.float32 and placement.autocast_dtype is None


@pytest.mark.slow
def test_reach_aux_labels_travel_from_the_workers_to_the_learner(small_spec, tmp_path):
    """With ``aux_coef`` set, reach's labels go through the slots and segments to the learner,
    whose every update reports the auxiliary loss (a cross-entropy over tiny-vla's 32×32
    named map, ~ln 1024 ≈ 6.9 untrained)."""
    spec = small_spec(env__name="reach", env__args={}, algo__aux_coef=5.0)
    spec.train.total_env_steps = 192
    _, rows = _run(spec, tmp_path)
    losses = [r.values["aux_loss"] for r in rows]
    assert losses and all(0.0 < loss < 10.0 for loss in losses)
