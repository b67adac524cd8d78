"""Reasons that say what happened: an unreadable checkpoint names its file and why; an OOM kill is named
only on evidence (the kernel's record of the job's pid, or its cgroup's counter)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
import torch

from dvlad.policies.checkpoint import UnreadableCheckpoint, load_checkpoint, save_checkpoint
from dvlad.runtime import oom
from dvlad.runtime.supervisor import OOM, Tracked, outcome
from dvlad.store import State
from dvlad.testing import LONG


def test_an_unreadable_checkpoint_says_which_file_and_why(tmp_path):
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(UnreadableCheckpoint, match=f"checkpoint {missing} is missing"):
        load_checkpoint(missing)
    corrupt = tmp_path / "cut.safetensors"
    save_checkpoint(corrupt, {"w": torch.ones(4)}, {})
    corrupt.write_bytes(corrupt.read_bytes()[:20])
    with pytest.raises(UnreadableCheckpoint, match=f"checkpoint {corrupt} is corrupt or not a safetensors file"):
        load_checkpoint(corrupt)
    if os.geteuid() != 0:  # root reads anything
        private = tmp_path / "private.safetensors"
        save_checkpoint(private, {"w": torch.ones(4)}, {})
        private.chmod(0)
        with pytest.raises(UnreadableCheckpoint, match="permission denied"):
            load_checkpoint(private)


# the two forms the kernel writes (mm/oom_kill.c): the summary line and the kill line
KMSG = ["6,1234,5678,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
        "global_oom,task_memcg=/user.slice,task=python,pid=4242,uid=1000",
        "3,1235,5679,-;Out of memory: Killed process 4343 (python) total-vm:9000000kB, anon-rss:8000000kB",
        "3,1236,5680,-;Memory cgroup out of memory: Killed process 4444 (python) total-vm:1kB",
        "6,1237,5681,-;python invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0"]


def test_the_kernels_oom_records_name_the_pids_killed():
    assert oom.killed_pids(KMSG) == {4242, 4343, 4444}


def test_sigkill_is_named_out_of_memory_only_on_evidence(monkeypatch):
    job = Tracked(1, 4242, 0.0, None)
    job_state = type("J", (), {"state": State.RUNNING, "reason": ""})()
    assert outcome(job_state, -9, {}) == (State.FAILED, "killed by signal SIGKILL")
    assert outcome(job_state, -9, {}, oom=True) == (State.FAILED, f"{OOM} (signal SIGKILL)")
    monkeypatch.setattr(oom, "kernel_records", lambda: KMSG)
    assert oom.oom_killed({job.pid}, None, None) and not oom.oom_killed({1, 2}, None, None)


def test_a_cgroups_oom_counter_is_read(tmp_path):
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert oom.oom_kills(tmp_path) == 2 and oom.oom_kills(tmp_path / "none") is None
    assert oom.oom_killed(set(), tmp_path, 1) and not oom.oom_killed(set(), tmp_path, 2)


def test_the_kernel_log_is_read_where_it_can_be():
    records = oom.kernel_records()  # root on this machine: the real log; elsewhere, none (never an error)
    assert isinstance(records, list)
    if os.access(oom.KMSG, os.R_OK):
        assert records, "readable but empty"


@pytest.mark.slow
def test_a_job_whose_checkpoint_went_missing_names_the_file(small_spec, tmp_path):
    """Was "No such file or directory": which file, and that it is missing."""
    from dvlad.lanes.pipeline import JobFailed
    from dvlad.runtime.job import failure_reason, run_job

    gone = tmp_path / "from" / "checkpoint.safetensors"
    spec = small_spec("async", policy__checkpoint=str(gone))
    with pytest.raises(JobFailed) as caught:
        run_job(spec, tmp_path / "out", quiet=True)
    assert failure_reason(caught.value) == (f"learner failed to start: UnreadableCheckpoint: checkpoint {gone} "
                                            "is missing (no such file)")


def _writable_memory_cgroup() -> Path | None:
    """This process's memory cgroup if a child cgroup can be made there and the kernel log read (root on
    a host that delegates its memory controller), else None."""
    base = oom.cgroup_of(os.getpid())
    if base is None or not os.access(base, os.W_OK) or not oom.kernel_records():
        return None
    return base


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["leader", "dvla-learner-0"])
def test_a_job_the_oom_killer_kills_is_said_to_have_run_out_of_memory(dvlads, victim):
    """A real OOM kill: the job's leader (or its learner) moved into a memory cgroup of 1 MiB dies of the
    kernel's OOM killer at its next allocation; the reason says memory, from the kernel's record."""
    base = _writable_memory_cgroup()
    if base is None:
        pytest.skip("needs a writable memory cgroup and a readable kernel log (root)")
    d = dvlads("[node]\ncpu_slots = 1\n")
    job_id = d.call("POST", "/v1/jobs", {"spec": LONG})[1]["job"]["id"]
    leader = d.wait_state(job_id, {"running"}, timeout=60)["pid"]
    deadline = time.monotonic() + 180
    while not d.call("GET", f"/v1/jobs/{job_id}/metrics")[1]["rows"]:  # under way: every process started
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pid = leader if victim == "leader" else next(
        p.pid for p in psutil.Process(leader).children(recursive=True) if p.name() == victim)
    cgroup = base / f"dvla-oom-test-{os.getpid()}-{victim}"
    cgroup.mkdir()
    try:
        limit = "memory.limit_in_bytes" if (cgroup / "memory.limit_in_bytes").exists() else "memory.max"
        (cgroup / limit).write_text(str(1 << 20))
        (cgroup / "cgroup.procs").write_text(str(pid))
        job = d.wait_state(job_id, {"failed", "succeeded", "cancelled"}, timeout=120)
    finally:
        while cgroup.exists():
            try:
                cgroup.rmdir()
            except OSError:  # its process is still dying
                time.sleep(0.2)
    if victim == "leader":
        assert job["reason"] == f"{OOM} (signal SIGKILL)"
    else:
        assert job["reason"].startswith(f"learner (pid {pid}) killed by signal SIGKILL")
        assert job["reason"].endswith(f"({OOM})")
