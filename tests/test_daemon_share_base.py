"""Two LoRA jobs on one base through a real dvlad, on the CPU: dvlad starts one holder, both jobs map
its one /dev/shm copy of the base, both train, and the holder and its segment go after the last."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from dvlad.segments import SHM_DIR, count, daemon_tag, owner_prefix, reclaim
from dvlad.testing import LONG, request
from tests.test_daemon_api import as_user

pytestmark = pytest.mark.slow

LORA = {"name": "transformer-vla", "args": {"preset": "tiny", "patch_size": 8, "trunk": {"num_hidden_layers": 2},
                                            "lora": {"r": 4}}}


def lora_job(name: str, learning_rate: float) -> dict:
    """Same base (policy and seed), another job: its own learning rate, so its own adapters."""
    return {**LONG, "job": {"name": name, "seed": 5}, "policy": LORA,
            "algo": {**LONG["algo"], "learning_rate": learning_rate},
            "train": {"total_env_steps": 4 * 8 * 6, "resume": False, "log_every": 1},
            "resources": {"share_base": True}}


def gauge(text: str, name: str) -> list[float]:
    return [float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)]


def holder_pids(state_dir: Path) -> list[int]:
    """The base holders running for this dvlad's state directory (its bases/ folder names them)."""
    return sorted(p.pid for p in psutil.process_iter(["cmdline"])
                  if "dvlad.sharing.holder" in (p.info["cmdline"] or []) and
                  any(arg.startswith(f"{state_dir}/bases/") for arg in p.info["cmdline"]))


def wait_until(what: str, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.1)
    return got


def test_two_lora_jobs_map_one_copy_of_their_base_held_by_dvlad_and_both_train(dvlads):
    dvlad = dvlads("[node]\ncpu_slots = 4\n")
    bases = owner_prefix(daemon_tag(dvlad.state_dir)) + "base"
    ids = [dvlad.call("POST", "/v1/jobs", {"spec": lora_job(f"lora{i}", 1e-3 * i)})[1]["job"]["id"] for i in (1, 2)]
    deadline, seen = time.monotonic() + 120, None
    while time.monotonic() < deadline and seen is None:  # both mapping it, while both run
        text = dvlad.call("GET", "/metrics")[1]
        if gauge(text, "dvlad_shared_base_jobs") == [2.0] and gauge(text, "dvlad_shared_base_bytes"):
            seen = text, count(bases)
        time.sleep(0.1)
    assert seen is not None, "the two jobs were never seen on one shared base"
    text, segments = seen
    assert segments.count == 1  # one copy of the base for both jobs, in dvlad's /dev/shm namespace
    assert segments.bytes == gauge(text, "dvlad_shared_base_bytes")[0]
    jobs = [dvlad.wait_state(i, {"succeeded", "failed"}, timeout=300) for i in ids]
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded"], jobs
    finals, mapped = [], set()
    for i in ids:  # each mapped the one base, and trained its own adapters (not the other job's)
        run = dvlad.state_dir / "jobs" / str(i) / "run"
        log = (dvlad.state_dir / "jobs" / str(i) / "job.log").read_text()
        mapped.update(re.findall(r"shared base: mapped .* from its holder \(SHA-256 (\w+)…\)", log))
        assert json.loads((run / "summary.json").read_text())["version"] >= 5, log
        finals.append(load_file(str(run / "checkpoint.safetensors")))
    assert len(mapped) == 1, mapped  # both logs name the same base
    assert any(not torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    deadline = time.monotonic() + 30
    while count(bases).count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count(bases).count == 0  # the holder ended after the last job, and its segment with it
    assert gauge(dvlad.call("GET", "/metrics")[1], "dvlad_shared_base_jobs") == []


def test_a_restarted_dvlad_re_adopts_the_holder_gives_it_the_next_job_and_ends_it_after_the_last(dvlads):
    dvlad = dvlads("[node]\ncpu_slots = 4\n")
    bases = owner_prefix(daemon_tag(dvlad.state_dir)) + "base"
    forever = {"total_env_steps": 10**9, "resume": False, "log_every": 1}  # both run until cancelled
    first = dvlad.call("POST", "/v1/jobs", {"spec": {**lora_job("before", 1e-3), "train": forever}})[1]["job"]["id"]

    def mapped(job_id: int) -> bool:
        log = dvlad.state_dir / "jobs" / str(job_id) / "job.log"
        return log.exists() and "shared base: mapped" in log.read_text()

    try:
        wait_until("the first job maps its base", lambda: mapped(first))
        [holder] = holder_pids(dvlad.state_dir)
        [segment] = [p for p in SHM_DIR.iterdir() if p.name.startswith(bases)]
        inode = segment.stat().st_ino
        dvlad.kill9()  # no goodbye: all it knows of the holder must already be on disk
        dvlad.start()
        assert dvlad.job(first)["state"] == "running"
        second = dvlad.call("POST", "/v1/jobs", {"spec": {**lora_job("after", 2e-3), "train": forever}})[1]["job"]["id"]
        wait_until("the second job maps a base", lambda: mapped(second))
        assert holder_pids(dvlad.state_dir) == [holder]  # the same holder, not a second one
        assert segment.stat().st_ino == inode and count(bases).count == 1  # the same copy of the base
        assert gauge(dvlad.call("GET", "/metrics")[1], "dvlad_shared_base_jobs") == [2.0]  # dvlad counts both
        for job_id in (first, second):  # the first is adopted, not dvlad's child: it still cancels
            dvlad.call("POST", f"/v1/jobs/{job_id}/cancel")
        assert [dvlad.wait_state(i, {"cancelled", "failed"})["state"] for i in (first, second)] == ["cancelled"] * 2
        wait_until("the holder ends after the last job, and its segment with it",
                   lambda: not holder_pids(dvlad.state_dir) and not count(bases).count, timeout=30)
        assert gauge(dvlad.call("GET", "/metrics")[1], "dvlad_shared_base_jobs") == []
    finally:  # a holder this test made must not outlive it, whatever failed
        for pid in holder_pids(dvlad.state_dir):
            os.kill(pid, signal.SIGKILL)
        reclaim(bases)  # a killed holder cannot remove its segment


def test_a_base_another_user_names_is_read_as_that_user_off_the_event_loop_and_refused_with_why(dvlads):
    """A ``pretrained`` directory with a link to /dev/zero (it never ends) and one to a root-only file:
    dvlad reads it only as the job's user, in a child process, so it keeps answering, never reads the
    root-only file, and fails the job naming both."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root): a job of another user")
    dvlad = dvlads("[node]\ncpu_slots = 4\n")
    base = dvlad.home / "base"  # a directory nobody may read (dvlad's home is 0755)
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").symlink_to("/dev/zero")
    secret = dvlad.home / "root-only.json"
    secret.write_text('{"secret": 1}')
    secret.chmod(0o600)
    (base / "secret.json").symlink_to(secret)
    args = {"pretrained": str(base), "patch_size": 8, "lora": {"r": 4}}
    status, body = as_user("nobody", dvlad.socket, "POST", "/v1/jobs", {
        "spec": {**lora_job("theirs", 1e-3), "policy": {"name": "transformer-vla", "args": args}}})
    assert status == 201, body

    def ended() -> dict | None:  # every status request answers within 5 s, while the base is read too
        job = request(dvlad.socket, "GET", f"/v1/jobs/{body['job']['id']}", timeout=5)[1]
        return job if job["state"] in ("running", "failed", "succeeded") else None

    job = wait_until("the job leaves placing", ended, timeout=30)
    assert job["state"] == "failed", job
    assert job["reason"] == (f"could not start: its base model (policy.args.pretrained = {base}), read as nobody, "
                             "could not be read: model.safetensors (a link to /dev/zero) is a character device, not "
                             "a regular file; secret.json: Permission denied")
    assert not holder_pids(dvlad.state_dir)
    assert request(dvlad.socket, "GET", "/v1/nodes", timeout=5)[0] == 200
