"""How an ended job's state and reason are decided: exit status, summary.json, the log's last line; and
that one job which cannot be settled stops neither the others nor the daemon's notice of it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from dvlad.config import Config
from dvlad.gpu.inventory import Inventory
from dvlad.runtime import supervisor
from dvlad.runtime.supervisor import Supervisor, Tracked, last_log_line, outcome
from dvlad.server.core import Daemon
from dvlad.store import Job, State, Store, Submission


def submitted(store: Store, name: str = "j") -> Job:
    return store.submit(Submission(uid=0, gid=0, user="root", groups=[], idempotency_key=None, name=name,
                                   priority=0, gpus=0, cpus=2, spec={}))[0][0]


def running(store: Store, name: str) -> Job:
    return store.transition(store.transition(submitted(store, name).id, State.PLACING, "p").id, State.RUNNING, "r")


def test_outcome_reasons(tmp_path):
    store = Store(tmp_path / "db")
    job = submitted(store)
    log = tmp_path / "job.log"
    log.write_text("Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'x'\n\n")
    tail = last_log_line(log)
    assert tail == "ModuleNotFoundError: No module named 'x'" and last_log_line(tmp_path / "none") == ""
    assert outcome(job, 1, {}, tail) == (State.FAILED, f"exited with status 1: {tail}")
    assert outcome(job, 0, {"status": "succeeded"}) == (State.SUCCEEDED, "succeeded")  # an older runner's summary
    assert outcome(job, None, {"status": "succeeded"})[0] is State.SUCCEEDED  # adopted, ended while dvlad was down
    assert outcome(job, -9, {}) == (State.FAILED, "killed by signal SIGKILL")
    assert outcome(job, 1, {"status": "failed", "reason": "boom"}) == (State.FAILED, "boom")  # its state says failed
    assert outcome(job, 0, {"status": "stopped"})[1] == "stopped by a SIGTERM that did not come from dvlad"
    assert outcome(job, -39, {}) == (State.FAILED, "killed by signal SIGRTMIN+5")  # no name in signal.Signals
    assert outcome(job, -32, {}) == (State.FAILED, "killed by signal signal 32")  # glibc's own, below SIGRTMIN
    cancelling = store.transition(running(store, "c").id, State.CANCELLING, "cancelled by root")
    assert outcome(cancelling, 0, {"status": "stopped"}) == (State.CANCELLED, "cancelled by root")
    assert outcome(cancelling, -9, {}) == (State.CANCELLED, "cancelled by root")


def test_a_job_that_cannot_be_settled_is_failed_with_the_error_and_the_others_settle(tmp_path, monkeypatch):
    store = Store(tmp_path / "db")
    broken, fine = running(store, "broken"), running(store, "fine")
    real_outcome = supervisor.outcome

    def outcome_failing_for_broken(job: Job, *args):
        if job.id == broken.id:
            raise RuntimeError("cannot work it out")
        return real_outcome(job, *args)

    monkeypatch.setattr(supervisor, "outcome", outcome_failing_for_broken)
    watcher = Supervisor(store, tmp_path, grace_s=1.0, on_change=lambda: None)
    for job in (broken, fine):
        popen = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
        popen.wait()
        watcher.tracked[job.id] = Tracked(job.id, popen.pid, 0.0, popen)
    watcher.poll()
    assert not watcher.tracked
    assert (store.get(broken.id).state, store.get(broken.id).reason) == (
        State.FAILED, "ended, but dvlad could not tell how: cannot work it out")
    assert (store.get(fine.id).state, store.get(fine.id).reason) == (
        State.FAILED, "exited with status 3: nothing in the log")


def test_the_daemon_stops_when_its_supervisor_does(tmp_path, monkeypatch):
    async def supervisor_dies(self: Supervisor) -> None:
        raise OSError("supervisor gone")

    monkeypatch.setattr(Supervisor, "run", supervisor_dies)
    daemon_loop = Daemon(Config(), Store(tmp_path / "db"), Inventory("none", {"devices": []}), tmp_path)
    with pytest.raises(RuntimeError, match="supervisor stopped") as stopped:
        asyncio.run(asyncio.wait_for(daemon_loop.run(), 10))
    assert isinstance(stopped.value.__cause__, OSError)


def test_a_finished_jobs_reason_says_which_limit_stopped_it_and_how_far_its_budget_got(tmp_path):
    """A job stopped by max_minutes was reported as having completed its env-step budget."""
    job = submitted(Store(tmp_path / "db"))

    def reason(**summary) -> str:
        state, said = outcome(job, 0, {"status": "succeeded", "total_env_steps": 200_000, **summary})
        assert state is State.SUCCEEDED
        return said

    assert reason(stop_reason="env_steps", env_steps=200_064) == \
        "completed its env-step budget: 200,064 of 200,000 env steps"
    assert reason(stop_reason="max_minutes", env_steps=1_234) == \
        "reached its wall-clock limit (train.max_minutes): 1,234 of 200,000 env steps"
    assert reason(stop_reason="max_minutes", env_steps=0, during_setup=True) == \
        "reached its wall-clock limit (train.max_minutes) during set-up: 0 of 200,000 env steps"
    assert reason(stop_reason="success target", env_steps=61_440) == \
        "reached its success target (train.stop_at_success): 61,440 of 200,000 env steps"
    assert reason(stop_reason="nonsense", env_steps="lots") == "succeeded"  # the user's file: anything may be in it
    stopped = {"status": "stopped", "stop_reason": "interrupted (Ctrl-C)", "env_steps": 5, "total_env_steps": 9}
    assert outcome(job, 3, stopped) == (State.FAILED,
                                        "stopped by a SIGINT that did not come from dvlad (5 of 9 env steps)")
