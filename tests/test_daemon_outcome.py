"""How an ended job's state and reason are decided: exit status, summary.json, the log's last line."""

from __future__ import annotations

from dvlad.runtime.supervisor import last_log_line, outcome
from dvlad.store import State, Store, Submission


def test_outcome_reasons(tmp_path):
    store = Store(tmp_path / "db")
    job = store.submit(Submission(uid=0, gid=0, user="root", groups=[], idempotency_key=None, name="j",
                                  priority=0, gpus=0, cpus=2, spec={}))[0][0]
    log = tmp_path / "job.log"
    log.write_text("Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'x'\n\n")
    tail = last_log_line(log)
    assert tail == "ModuleNotFoundError: No module named 'x'" and last_log_line(tmp_path / "none") == ""
    assert outcome(job, 1, {}, tail) == (State.FAILED, f"exited with status 1: {tail}")
    assert outcome(job, 0, {"status": "succeeded"}) == (State.SUCCEEDED, "completed its env-step budget")
    assert outcome(job, None, {"status": "succeeded"})[0] is State.SUCCEEDED  # adopted, ended while dvlad was down
    assert outcome(job, -9, {}) == (State.FAILED, "killed by signal SIGKILL")
    assert outcome(job, 1, {"status": "failed", "reason": "boom"}) == (State.FAILED, "job failed: boom")
    assert outcome(job, 0, {"status": "stopped"})[1] == "stopped by a SIGTERM that did not come from dvlad"
    cancelling = store.transition(store.transition(store.transition(job.id, State.PLACING, "p").id,
                                                   State.RUNNING, "r").id, State.CANCELLING, "cancelled by root")
    assert outcome(cancelling, 0, {"status": "stopped"}) == (State.CANCELLED, "cancelled by root")
    assert outcome(cancelling, -9, {}) == (State.CANCELLED, "cancelled by root")
