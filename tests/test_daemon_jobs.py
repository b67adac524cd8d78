"""Real jobs through a real dvlad: run to success, cancel, and survive kill -9 of the daemon."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import psutil
import pytest
import torch

from dvlad.testing import LONG, TINY_POLICY, Dvlad

pytestmark = pytest.mark.slow  # real jobs through a real dvlad

REACH = {"job": {"name": "reach-tiny"}, "env": {"name": "reach", "num_envs": 4, "groups": 2, "workers": 1},
         "policy": {"args": TINY_POLICY}, "algo": {"update_epochs": 1, "minibatches": 2},
         "pipeline": {"segment_steps": 8}, "train": {"total_env_steps": 256, "resume": False}}
WAITS = {"job": {"name": "waits"}, "env": {"workers": 1}}
"""Fits the node (1 CPU slot) but not while LONG holds it: stays queued, so only the API is exercised."""
ONE_SLOT = "[node]\ncpu_slots = 1\n"
"""The node of every daemon here: room for one LONG (or REACH) job at a time (one env worker each)."""


def submit(d: Dvlad, spec: dict, **extra) -> dict:
    status, body = d.call("POST", "/v1/jobs", {"spec": spec, **extra})
    assert status == 201, body
    return body["job"]


def test_reach_job_runs_to_success_with_status_and_logs_while_it_runs(dvlads):
    d = dvlads(ONE_SLOT)
    job = submit(d, REACH)
    running = d.wait_state(job["id"], {"running", "succeeded", "failed"}, timeout=30)
    assert running["state"] == "running", running["reason"]
    assert d.call("GET", f"/v1/jobs/{job['id']}/logs")[0] == 200
    status, streamed = d.call("GET", f"/v1/jobs/{job['id']}/logs?follow=1", timeout=120)  # ends with the job
    assert status == 200 and "done: " in streamed, streamed[-2000:]
    final = d.wait_state(job["id"], {"succeeded", "failed"}, timeout=10)
    assert final["state"] == "succeeded", final["reason"]
    assert final["exit_code"] == 0 and final["cpus"] == 1  # one slot per env worker
    assert [e["to_state"] for e in final["events"]] == ["queued", "placing", "running", "succeeded"]
    status, metrics = d.call("GET", f"/v1/jobs/{job['id']}/metrics")
    assert status == 200 and metrics["rows"] and metrics["rows"][-1]["env_steps"] >= 256


def test_the_job_directory_is_the_daemons_and_what_the_user_swaps_in_is_not_read(dvlads):
    """dvlad reads a job's files as root: the directory holding the log, pid and spec is its own,
    and in run/ (the user's) a symlink is never followed. A log of megabytes streams in chunks."""
    d = dvlads(ONE_SLOT)
    job_id = submit(d, REACH)["id"]
    assert d.wait_state(job_id, {"succeeded", "failed"}, timeout=120)["state"] == "succeeded"
    home = d.state_dir / "jobs" / str(job_id)
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (os.geteuid(), 0o711)
    assert {n: (home / n).stat().st_mode & 0o777 for n in ("job.log", "spec.toml", "pid")} == {
        "job.log": 0o600, "spec.toml": 0o600, "pid": 0o600}
    # the user's run/ and all the job wrote (spec, metrics, summary, TensorBoard, checkpoints) are theirs
    # alone, not their primary group's; the daemon's directories can be passed through, not listed
    written = {str(p.relative_to(home)): p.stat().st_mode & 0o777 for p in [home / "run", *(home / "run").rglob("*")]}
    assert {"run", "run/metrics.jsonl", "run/job.json", "run/summary.json"} <= set(written), written
    assert written["run"] == 0o700 and not {n: oct(m) for n, m in written.items() if m & 0o077}
    assert {p.name: p.stat().st_mode & 0o777 for p in (d.state_dir, home.parent)} == {"state": 0o711, "jobs": 0o711}
    size = (home / "job.log").stat().st_size
    appended = "x" * (3 << 20) + "\nend\n"
    with (home / "job.log").open("a") as log:
        log.write(appended)
    assert d.call("GET", f"/v1/jobs/{job_id}/logs?offset={size}", timeout=60) == (200, appended)
    checkpoints = sorted((home / "run").glob("*.safetensors"))
    assert checkpoints and d.call("GET", f"/v1/jobs/{job_id}/checkpoint")[0] == 200
    for path in checkpoints:
        path.unlink()
        path.symlink_to(d.state_dir / "dvlad.db")  # the daemon's database: root's only
    (home / "run" / "metrics.jsonl").unlink()
    (home / "run" / "metrics.jsonl").symlink_to(d.state_dir / "dvlad.db")
    assert d.call("GET", f"/v1/jobs/{job_id}/checkpoint")[0] == 404
    assert d.call("GET", f"/v1/jobs/{job_id}/metrics") == (200, {"job_id": job_id, "rows": []})


def test_a_metrics_file_of_200_mb_without_a_newline_does_not_stall_the_daemon(dvlads):
    """``/metrics`` reads each running job's last metrics row on dvlad's event loop: a job's user who
    writes 200 MB with no newline there gets no row read, and no client waits for it."""
    d = dvlads(ONE_SLOT)
    job_id = submit(d, LONG)["id"]
    d.wait_state(job_id, {"running"}, timeout=20)
    deadline = time.monotonic() + 60
    while not d.call("GET", f"/v1/jobs/{job_id}/metrics?last=1")[1]["rows"]:  # the job has its file open
        assert time.monotonic() < deadline, d.call("GET", f"/v1/jobs/{job_id}/logs")[1]
        time.sleep(0.2)
    run = d.state_dir / "jobs" / str(job_id) / "run"
    with (run / "huge").open("wb") as huge:  # the job goes on appending to the file it opened, not this one
        huge.truncate(200 << 20)
    (run / "huge").replace(run / "metrics.jsonl")
    started = time.monotonic()
    status, text = d.call("GET", "/metrics", timeout=10)
    assert status == 200 and f'job="{job_id}"' not in text and time.monotonic() - started < 2.0
    assert d.job(job_id)["state"] == "running"
    lag = [float(line.split()[-1]) for line in d.call("GET", "/metrics")[1].splitlines()
           if line.startswith("dvlad_event_loop_lag_max_seconds")]
    assert lag and lag[0] < 2.0, lag


def test_cancel_stops_the_job_and_frees_its_slots_for_the_next(dvlads):
    d = dvlads(ONE_SLOT)
    first = submit(d, LONG)
    second = submit(d, LONG)  # cpu_slots = 1 and each takes 1: waits for the first
    d.wait_state(first["id"], {"running"}, timeout=20)
    deadline = time.monotonic() + 60
    while not d.call("GET", f"/v1/jobs/{first['id']}/metrics")[1]["rows"]:  # training, not just starting
        assert time.monotonic() < deadline, d.call("GET", f"/v1/jobs/{first['id']}/logs")[1]
        time.sleep(0.2)
    assert d.job(second["id"])["state"] == "queued"
    status, text = d.call("GET", "/metrics")
    assert f'dvlad_job_env_steps_per_second{{job="{first["id"]}"' in text
    status, cancelling = d.call("POST", f"/v1/jobs/{first['id']}/cancel")
    assert status == 200 and cancelling["state"] == "cancelling"
    done = d.wait_state(first["id"], {"cancelled", "failed", "succeeded"}, timeout=30)
    assert done["state"] == "cancelled" and done["reason"] == "cancelled by root", done
    assert not psutil.pid_exists(done["pid"]) or psutil.Process(done["pid"]).status() == psutil.STATUS_ZOMBIE
    d.wait_state(second["id"], {"running"}, timeout=20)
    d.call("POST", f"/v1/jobs/{second['id']}/cancel")
    assert d.wait_state(second["id"], {"cancelled", "failed"}, timeout=30)["state"] == "cancelled"


def test_kill_9_during_50_submits_loses_and_duplicates_nothing_and_readopts_the_running_job(dvlads):
    d = dvlads(ONE_SLOT)
    runner = submit(d, LONG)
    pid = d.wait_state(runner["id"], {"running"}, timeout=20)["pid"]
    started = psutil.Process(pid).create_time()
    acknowledged: dict[str, int] = {}
    retries = [0]

    def client(keys: list[str]) -> None:
        for key in keys:
            deadline = time.monotonic() + 60
            while True:  # a client that retries with the same key until it gets an answer
                try:
                    status, body = d.call("POST", "/v1/jobs", {"spec": WAITS, "idempotency_key": key},
                                          timeout=5)
                except OSError:
                    retries[0] += 1
                    assert time.monotonic() < deadline, f"no answer for {key}"
                    time.sleep(0.05)
                    continue
                assert status in (200, 201), body
                acknowledged[key] = body["job"]["id"]
                break
            time.sleep(0.03)  # spread the submits so the kills land among them

    keys = [f"submit-{i}" for i in range(50)]
    threads = [threading.Thread(target=client, args=(keys[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    rng = random.Random(5)
    kills = 0
    while any(t.is_alive() for t in threads) and kills < 3:
        time.sleep(rng.uniform(0.05, 0.3))
        d.kill9()
        kills += 1
        d.start()
    for t in threads:
        t.join(90)
    assert kills >= 1 and retries[0] > 0  # the clients did lose the daemon mid-way
    assert len(acknowledged) == 50
    _, listed = d.call("GET", "/v1/jobs?all=1")
    jobs = [j for j in listed["jobs"] if j["id"] != runner["id"]]
    assert sorted(j["id"] for j in jobs) == sorted(acknowledged.values())  # none lost, none duplicated
    assert len(set(acknowledged.values())) == 50
    again = d.job(runner["id"])
    assert again["state"] == "running" and again["pid"] == pid  # re-adopted, not restarted
    assert psutil.Process(pid).create_time() == started
    assert [e["to_state"] for e in again["events"]] == ["queued", "placing", "running"]
    assert all(d.job(i)["state"] == "queued" for i in acknowledged.values())
    for job_id in acknowledged.values():  # else they would start, one by one, once the runner ends
        d.call("POST", f"/v1/jobs/{job_id}/cancel")
    d.call("POST", f"/v1/jobs/{runner['id']}/cancel")  # an adopted job (not dvlad's child) still cancels
    assert d.wait_state(runner["id"], {"cancelled", "failed"}, timeout=30)["state"] == "cancelled"


@pytest.mark.parametrize(("spec", "field", "asks"), [
    ({"resources": {"gpus": 1}, "env": {"workers": 1}}, "spec.resources.gpus",
     "1 GPU and 1 CPU slot (one per env worker): lower resources.gpus to 0 (the job then runs on the CPU) "
     "or use a node with more GPUs"),
    ({"env": {"workers": 2}}, "spec.env.workers",
     "0 GPUs and 2 CPU slots (one per env worker): lower env.workers to 1 or fewer (keeping num_envs "
     "divisible by groups × workers), or raise node.cpu_slots or node.cpu_oversubscribe in dvlad's config"),
], ids=["a-gpu-on-a-node-without-one", "more-workers-than-cpu-slots"])
def test_a_job_bigger_than_the_node_is_refused_at_submit_and_not_recorded(dvlads, tmp_path, spec, field, asks):
    no_gpus = tmp_path / "no-gpus.json"  # a node without GPUs, also where the tests run on a GPU machine
    no_gpus.write_text(json.dumps({"host": "cpu-node", "devices": [], "pairs": []}))
    d = dvlads(ONE_SLOT, env={"DVLAD_FAKE_TOPOLOGY": str(no_gpus)})
    status, body = d.call("POST", "/v1/jobs", {"spec": {"job": {"name": "too-big"}, **spec}})
    assert (status, body["code"], body["field"]) == (409, "exceeds_node", field), body
    assert body["reason"] == f"this node has 0 GPUs and 1 CPU slot (node.cpu_slots); the job asks for {asks}"
    assert d.call("GET", "/v1/jobs?all=1")[1]["jobs"] == []


def test_a_job_that_ended_while_dvlad_was_down_is_settled_at_restart(dvlads):
    d = dvlads(ONE_SLOT)
    job = submit(d, LONG)
    pid = d.wait_state(job["id"], {"running"}, timeout=20)["pid"]
    d.kill9()
    os.killpg(pid, signal.SIGKILL)  # the job dies while no daemon watches
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)
    d.start()
    settled = d.job(job["id"])
    assert settled["state"] == "failed"
    assert settled["reason"] == "its process ended while dvlad was down, leaving no summary"


def test_a_job_killed_by_a_real_time_signal_fails_naming_it_and_later_jobs_still_finish(dvlads):
    d = dvlads(ONE_SLOT)
    job = submit(d, LONG)
    pid = d.wait_state(job["id"], {"running"}, timeout=20)["pid"]
    os.kill(pid, signal.SIGRTMIN + 5)  # Python knows no name for it: this once stopped the supervisor
    killed = d.wait_state(job["id"], {"failed", "succeeded"}, timeout=30)
    assert (killed["state"], killed["reason"]) == ("failed", "killed by signal SIGRTMIN+5")
    later = submit(d, {**LONG, "job": {"name": "later"}, "train": {"total_env_steps": 64, "resume": False}})
    done = d.wait_state(later["id"], {"succeeded", "failed"}, timeout=120)
    assert done["state"] == "succeeded", done["reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="replays a recorded GPU on a machine without one")
def test_gpu_jobs_are_placed_on_the_recorded_gpu_one_at_a_time_and_failures_say_why(dvlads):
    from dvlad.testing import FIXTURE

    if not FIXTURE.exists():
        pytest.skip(f"the recorded topology {FIXTURE} is not in this checkout")
    d = dvlads(ONE_SLOT, recorded_gpu=True)
    gpu_job = {**REACH, "resources": {"gpus": 1}}
    first, second = submit(d, gpu_job), submit(d, gpu_job)  # the recorded node has one GPU
    placed = d.wait_state(first["id"], {"running", "failed"}, timeout=20)
    assert placed["gpu_ids"] == [0] and d.job(second["id"])["state"] == "queued"
    failed = d.wait_state(first["id"], {"failed", "succeeded"}, timeout=60)
    # the recorded GPU is not really here: the job refuses to run on the CPU, and its reason reaches the store
    assert failed["state"] == "failed" and "resources.gpus = 1, but torch sees no GPU" in failed["reason"]
    assert d.wait_state(second["id"], {"running", "failed", "succeeded"}, timeout=20)["gpu_ids"] == [0]
    d.wait_state(second["id"], {"failed", "succeeded"}, timeout=60)


@pytest.mark.skipif(torch.cuda.is_available(), reason="replays a recorded GPU on a machine without one")
def test_a_two_gpu_job_is_placed_on_an_nvlinked_pair_not_the_lowest_indices(dvlads, tmp_path):
    from tests.test_topology import _host

    topology = tmp_path / "nvlink-pairs.json"  # NVML's shape: GPUs 0+2 and 1+3 joined by two NVLinks each
    topology.write_text(json.dumps({"host": "pairs", **_host(4, {0: [2, 2], 2: [0, 0], 1: [3, 3], 3: [1, 1]})}))
    d = dvlads(ONE_SLOT, env={"DVLAD_FAKE_TOPOLOGY": str(topology)})
    job = submit(d, {**REACH, "resources": {"gpus": 2}})
    placed = d.wait_state(job["id"], {"running", "failed", "succeeded"}, timeout=20)
    assert placed["gpu_ids"] == [0, 2]
    # the job gets the record it was placed with, to plan its layout as the daemon did (docs/planes.md)
    handed = d.state_dir / "jobs" / str(job["id"]) / "topology.json"
    assert json.loads(handed.read_text()) == json.loads(topology.read_text())
    assert "job layout" in d.stderr.read_text()  # the daemon logged the plan it starts the job with
