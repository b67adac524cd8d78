"""Every /dev/shm segment of a job is named after it and removed once the job ends, however it ends:
by dvlad after a kill -9 of the job's leader, by dvlad at start for jobs that are gone, by the job
runner run by hand when it fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import pytest
import tomli_w

from dvla.spec import spec_to_dict
from dvlad.segments import PREFIX_ENV, count, daemon_tag, job_prefix, jobs_with_segments, owner_prefix, reclaim
from dvlad.shm import ArraySpec, SharedArrays
from dvlad.testing import LONG

REPO = Path(__file__).resolve().parents[2]


def test_segments_carry_the_job_prefix_and_are_reclaimed_by_it(monkeypatch):
    monkeypatch.setenv(PREFIX_ENV, job_prefix("dtest0001", 7))
    arrays = SharedArrays({"x": ArraySpec((1024,), "float32")})
    try:
        assert arrays.handle.block.startswith("dvla-dtest0001-7-")
        assert jobs_with_segments("dtest0001") == {7}
        assert count(job_prefix("dtest0001", 7)).count == 1 and count(job_prefix("dtest0001", 71)).count == 0
        removed = reclaim(job_prefix("dtest0001", 7))
        assert removed.count == 1 and removed.bytes >= 4096
        assert count(owner_prefix("dtest0001")).count == 0
    finally:
        arrays.close()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow
def test_dvlad_reclaims_the_segments_of_a_job_leader_killed_by_sigkill_and_orphans_at_start(dvlads):
    d = dvlads("[node]\ncpu_slots = 1\n")
    prefix = job_prefix(daemon_tag(d.state_dir), 1)
    status, body = d.call("POST", "/v1/jobs", {"spec": LONG})
    assert status == 201, body
    job = d.wait_state(body["job"]["id"], {"running"}, timeout=30)
    assert job["id"] == 1
    _wait(lambda: count(prefix).count >= 3, 120, "the job never made its segments")  # slots, queue, weights
    made = count(prefix)
    os.kill(job["pid"], signal.SIGKILL)  # as the OOM killer does: nothing of the job's own clean-up runs
    job = d.wait_state(1, {"failed"}, timeout=30)
    assert "SIGKILL" in job["reason"]
    _wait(lambda: count(prefix).count == 0, 10, f"left: {count(prefix)}")
    status, text = d.call("GET", "/metrics")
    assert status == 200
    reclaimed = next(line for line in text.splitlines() if line.startswith("dvlad_shm_reclaimed_segments_total"))
    assert float(reclaimed.split()[-1]) >= made.count, text

    # dvlad killed and restarted: the segments of a job that is gone go, a live job's stay (it is
    # adopted), another daemon's are not touched
    second = d.call("POST", "/v1/jobs", {"spec": LONG})[1]["job"]["id"]
    live = job_prefix(daemon_tag(d.state_dir), second)
    _wait(lambda: count(live).count >= 3, 120, "the second job never made its segments")
    live_before = count(live).count
    d.kill9()
    ours = shared_memory.SharedMemory(name=job_prefix(daemon_tag(d.state_dir), 99) + "abc", create=True, size=4096)
    theirs = shared_memory.SharedMemory(name=job_prefix("dother001", 99) + "abc", create=True, size=4096)
    try:
        d.start()
        assert d.job(second)["state"] == "running"
        assert count(job_prefix(daemon_tag(d.state_dir), 99)).count == 0
        assert count(job_prefix("dother001", 99)).count == 1
        assert count(live).count == live_before
    finally:
        for segment in (ours, theirs):
            segment.close()
        reclaim(job_prefix("dother001", 99))
    d.call("POST", f"/v1/jobs/{second}/cancel")
    d.wait_state(second, {"cancelled"}, timeout=60)
    _wait(lambda: count(live).count == 0, 10, f"left: {count(live)}")


@pytest.mark.slow
def test_a_job_run_by_hand_that_fails_leaves_no_segments(small_spec, tmp_path):
    spec = small_spec("async", env__name="dvlad.envs.faulty:make", train__total_env_steps=100_000)
    spec.env.args.update(fault="nan", after_steps=20)
    job = tmp_path / "job.toml"
    job.write_text(tomli_w.dumps(spec_to_dict(spec)))
    env = {k: v for k, v in os.environ.items() if k != PREFIX_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "dvlad.runtime.job", str(job), "--output-dir", str(tmp_path / "o"),
                             "--quiet"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    prefix = job_prefix("p", proc.pid)
    _wait(lambda: count(prefix).count >= 3 or proc.poll() is not None, 120, "no segments made")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "non-finite rewards" in err, err
    assert count(prefix).count == 0
