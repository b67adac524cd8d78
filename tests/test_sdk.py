"""The SDK against a real dvlad on a real socket (and over TCP with a token): jobs to their end, typed
errors with the daemon's reasons, checkpoints both ways, live GPU stats on the recorded H100."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from dvla import sdk
from dvla.checkpoint import metadata
from dvlad.testing import FIXTURE, LONG, TINY_POLICY, free_port
from tests.test_daemon_api import ROOMY

pytestmark = pytest.mark.slow  # every test talks to a real dvlad

ENV = {"name": "reach", "num_envs": 4, "groups": 2, "workers": 1}
QUICK = {"algo": {"name": "ppo", "update_epochs": 1, "minibatches": 2}, "pipeline": {"segment_steps": 8},
         "train": {"resume": False}}


@pytest.fixture(scope="module")
def local(module_dvlads):
    return module_dvlads("[node]\ncpu_slots = 2\n", recorded_gpu=True)


@pytest.fixture
def client(local):
    with sdk.Client(local.socket) as c:
        yield c


def test_train_wait_metrics_logs_checkpoint_and_train_again_from_it(client, local, tmp_path):
    job = client.train({"name": "tiny-vla", "args": TINY_POLICY}, ENV, steps=256, job={"name": "sdk-reach"}, **QUICK)
    lines = list(job.logs(follow=True))  # live, line by line, until the job ends
    assert any(line.startswith("done: ") for line in lines), lines
    final = job.wait(timeout=30, poll=0.2)
    assert final["state"] == "succeeded" and job.status() == "succeeded"
    rows = job.metrics()
    assert rows and rows[-1]["env_steps"] >= 256 and len(job.metrics(last=1)) == 1
    assert client.logs(job.id).splitlines() == lines == list(job.logs(follow=False))
    log = local.state_dir / "jobs" / str(job.id) / "job.log"
    size = log.stat().st_size
    with log.open("ab") as f:  # a job may print anything, UTF-8 or not
        f.write(b"caf\xc3\xa9 \xff\n")
    assert client.log_bytes(job.id, offset=size) == b"caf\xc3\xa9 \xff\n"  # offsets count these bytes
    assert client.logs(job.id, offset=size) == "café \ufffd\n"
    files = job.checkpoint(tmp_path / "ckpt")
    assert [f.name for f in files] == ["checkpoint.safetensors"]
    assert metadata(files[0])["format"] == "dvla-checkpoint-1"
    again = client.train(tmp_path / "ckpt", ENV, steps=32, **QUICK)  # a local daemon: referenced by path
    policy = client.job(again.id)["spec"]["policy"]
    assert policy["checkpoint"] == str(files[0]) and policy["args"] == TINY_POLICY  # the checkpoint's policy
    assert again.wait(timeout=120, poll=0.2)["state"] == "succeeded"
    assert [j["id"] for j in client.jobs()][:2] == [job.id, again.id]


def test_a_failing_job_raises_job_failed_with_the_daemons_reason(client):
    job = client.train("nosuch.module:make", ENV, steps=64, **QUICK)
    with pytest.raises(sdk.JobFailed) as failed:
        job.wait(timeout=60, poll=0.2)
    assert failed.value.state == "failed" and "nosuch.module" in failed.value.reason
    with pytest.raises(sdk.Conflict, match="already failed"):
        job.cancel()


def test_cancel_ends_in_job_failed_cancelled(client):
    job = client.submit(LONG)
    deadline = time.monotonic() + 30
    while job.status() != "running":
        assert time.monotonic() < deadline, job.record
        time.sleep(0.1)
    assert job.cancel()["state"] == "cancelling"
    with pytest.raises(sdk.JobFailed) as ended:
        job.wait(timeout=60, poll=0.2)
    assert ended.value.state == "cancelled" and ended.value.reason == "cancelled by root"


def test_errors_are_typed_with_the_daemons_field_and_reason(client, tmp_path):
    with pytest.raises(sdk.NotFound) as missing:
        client.job(987654)
    assert missing.value.field == "job_id" and missing.value.status == 404
    with pytest.raises(sdk.InvalidSpec) as bad:  # checked before sending: every issue, with its key
        client.submit({"env": {"num_envs": 3}, "algo": {"gamma": 2.0}})
    assert {i["field"] for i in bad.value.issues} == {"spec.env.num_envs", "spec.algo.gamma"}
    with pytest.raises(sdk.InvalidSpec, match="no such checkpoint"):
        client.train(tmp_path / "nothing-here", "reach")
    done = client.submit({**LONG, "resources": {"gpus": 0}, "job": {"name": "no-ckpt"}})
    client.cancel(done.id)  # queued or just started: no checkpoint yet
    with pytest.raises(sdk.NotFound, match="no checkpoint"):
        client.checkpoint(done.id, tmp_path / "none")
    with pytest.raises(sdk.DaemonUnavailable, match="dvlad --user") as down:
        sdk.Client(str(tmp_path / "no.sock")).jobs()
    assert str(tmp_path / "no.sock") in str(down.value)
    with pytest.raises(sdk.DaemonUnavailable):
        sdk.Client(f"127.0.0.1:{free_port()}", token="t").nodes()
    with pytest.raises(sdk.JobFailed):
        client.handle(done.id).wait(timeout=30, poll=0.1)


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"the recorded topology {FIXTURE} is not in this checkout")
def test_gpus_on_the_recorded_machine_show_which_job_holds_one(client):
    idle = client.gpus()
    assert idle["source"] == "fixture" and idle["host"]
    (gpu,) = idle["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["memory_total"] > 70e9 and gpu["job"] is None
    assert gpu["utilization"] is None and gpu["temperature"] is None  # no NVML: no live fields, no crash
    job = client.submit({**LONG, "resources": {"gpus": 1}, "job": {"name": "on-gpu"}})
    deadline = time.monotonic() + 30
    while (holder := client.gpus()["gpus"][0]["job"]) is None:  # placed at once; held until its process ends
        assert time.monotonic() < deadline and job.status() in ("queued", "placing", "running"), job.record
        time.sleep(0.05)
    assert holder == {"id": job.id, "user": "root", "name": "on-gpu"}
    if job.status() not in ("succeeded", "failed", "cancelled"):
        client.cancel(job.id)
    with pytest.raises(sdk.JobFailed):
        job.wait(timeout=30, poll=0.1)
    assert client.nodes()[0]["gpus"][0]["index"] == 0 and client.topology()["devices"]


def test_async_client_submits_follows_and_cancels(local):
    async def flow() -> None:
        async with sdk.AsyncClient(local.socket) as c:
            job = await c.submit(LONG, idempotency_key="async-1")
            assert (await c.submit(LONG, idempotency_key="async-1")).id == job.id
            assert (await job.cancel())["state"] in ("cancelled", "cancelling")
            with pytest.raises(sdk.JobFailed):
                await job.wait(timeout=60, poll=0.2)
            assert job.record["state"] == "cancelled"
            streamed = [line async for line in c.follow_logs(job.id)]  # an ended job's stream ends
            assert streamed == (await c.logs(job.id)).splitlines()
            assert job.id in [j["id"] for j in await c.jobs()]
            assert [e["to_state"] for e in (await c.job(job.id))["events"]][-1] == "cancelled"
            assert (await c.events())[-1]["job_id"] == job.id
            assert (await c.gpus())["gpus"] is not None and await c.metrics(job.id) is not None
            with pytest.raises(sdk.NotFound):
                await c.cancel(987654)

    asyncio.run(flow())


def test_following_a_job_rides_out_a_daemon_restart(dvlads):
    """dvlad restarts while a job is followed: the job runs on, and the follower resumes at the next
    line (none lost, none twice) and still gets the job's outcome."""
    d = dvlads("[node]\ncpu_slots = 2\n")
    with sdk.Client(d.socket) as client:
        job = client.train({"name": "tiny-vla", "args": TINY_POLICY}, ENV, steps=768, job={"name": "restart"},
                           **QUICK)
        lines: list[str] = []
        outcome: list = []

        def follow() -> None:
            try:
                lines.extend(job.logs(follow=True))
                outcome.append(job.wait(timeout=120, poll=0.2)["state"])
            except Exception as exc:  # reported by the assertion below
                outcome.append(exc)

        follower = threading.Thread(target=follow)
        follower.start()
        deadline = time.monotonic() + 60
        while not lines and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lines and client.job(job.id)["state"] == "running"
        d.stop()
        time.sleep(2.0)  # the follower finds nothing listening, and waits
        d.start()
        follower.join(180)
        assert outcome == ["succeeded"]
        assert lines == client.logs(job.id).splitlines() and any(x.startswith("done: ") for x in lines)


def _fake_checkpoint(path, policy_args) -> None:
    """A safetensors file as the engine writes one (one tensor; the job's spec in the metadata)."""
    spec = {"policy": {"name": "tiny-vla", "action_chunk": 1, "checkpoint": "", "args": policy_args}}
    header = json.dumps({"policy.flat": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                         "__metadata__": {"format": "dvla-checkpoint-1", "spec": json.dumps(spec)}}).encode()
    path.mkdir()
    (path / "checkpoint.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))


def _tar(*members: tarfile.TarInfo) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
    return out.getvalue()


def test_remote_client_uploads_its_checkpoint_and_may_not_see_others_jobs(tmp_path, dvlads):
    if os.geteuid() != 0:
        pytest.skip("a token for another user needs a root dvlad (CI runs as root)")
    d = dvlads("max_upload_bytes = 16384\n" + ROOMY + "[limits.default]\nrunning_jobs = 0\n", start=False)
    port = d.serve_tcp("nobody-token nobody\n")
    d.start()
    roots = d.call("POST", "/v1/jobs", {"spec": {"job": {"name": "roots"}}})[1]["job"]["id"]
    with sdk.Client(f"http://127.0.0.1:{port}", token="nobody-token") as remote:
        with pytest.raises(sdk.PermissionDenied, match="belongs to root; nobody may not see it"):
            remote.job(roots)
        _fake_checkpoint(tmp_path / "run", TINY_POLICY)
        job = remote.train(tmp_path / "run", "reach", steps=64)  # remote: the checkpoint is uploaded
        checkpoint = remote.job(job.id)["spec"]["policy"]["checkpoint"]
        home = d.state_dir / "uploads" / "65534"
        assert checkpoint.startswith(f"{home}/") and checkpoint.endswith("/checkpoint.safetensors")
        assert os.stat(checkpoint).st_uid == 65534 and os.stat(home).st_mode & 0o777 == 0o700
        assert Path(checkpoint).read_bytes() == (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
        victim = d.state_dir / "dvlad.db"  # the user may put links in their upload home: never followed
        (home / "link").symlink_to(victim)
        assert remote.upload(tmp_path / "run" / "checkpoint.safetensors") == checkpoint  # same content, same path
        assert victim.stat().st_uid == 0
        (home / "link").unlink()
    with pytest.raises(sdk.PermissionDenied):
        sdk.Client(f"127.0.0.1:{port}", token="wrong").jobs()
    escape = tarfile.TarInfo("../../escaped")
    escape.size = 1
    link = tarfile.TarInfo("innocent")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    big = tarfile.TarInfo("big")
    big.size = 20000
    for body, status, code in ((_tar(escape), 400, "bad_upload"), (_tar(link), 400, "bad_upload"),
                               (b"not a tar" * 100, 400, "bad_upload"), (_tar(big), 413, "too_large")):
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/uploads", content=body, timeout=10,
                           headers={"Authorization": "Bearer nobody-token", "Content-Type": "application/x-tar"})
        assert (reply.status_code, reply.json()["code"]) == (status, code), reply.text
    assert not (d.state_dir / "escaped").exists() and not (d.state_dir / "uploads" / "escaped").exists()
    assert sorted(p.name for p in home.iterdir()) == [checkpoint.split("/")[-2]]  # no leftovers
    assert not any((d.state_dir / "uploads" / ".staging").iterdir())
