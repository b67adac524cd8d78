"""The daemon under load, in-process and fast: the scheduling pass decides off the event loop, the
queue and the state counts come from memory, listings are pages (defect 9 of issue 17).

No timing here: whether the loop stays free is asserted by what it can do while a pass decides
(a timer fires, a cancel goes through), never by how long something took. The figures are
``scripts/bench_daemon.py``'s.
"""

from __future__ import annotations

import asyncio
import threading

from dvlad.config import Config
from dvlad.gpu.inventory import Inventory
from dvlad.sched import Limit, Limits
from dvlad.server import core
from dvlad.server.auth import Identity
from dvlad.server.core import Daemon
from dvlad.store import State, Store, Submission

QUEUED_ONLY = Limits(default_user=Limit(running_jobs=0))


def _daemon(tmp_path, limits: Limits = QUEUED_ONLY) -> Daemon:
    return Daemon(Config(limits=limits), Store(tmp_path / "db"), Inventory("none", {"devices": []}), tmp_path)


def _queue(store: Store, n: int) -> list[int]:
    subs = [Submission(uid=1000 + i % 3, gid=1000, user=f"u{i % 3}", groups=["lab"], idempotency_key=None,
                       name=f"j{i}", priority=0, gpus=0, cpus=1, spec={"job": {"name": f"j{i}"}}) for i in range(n)]
    return [job.id for job, _ in store.submit(*subs)]


def _hold_the_decision(monkeypatch) -> tuple[threading.Event, dict[str, bool]]:
    """Make the pass's decision wait until the event loop sets the returned event (5 s at most), and
    record whether it was set in time and whether the decision ran off the loop's thread."""
    freed, seen = threading.Event(), {}
    decide = core.plan

    def held(*args):
        seen["off_the_loop_thread"] = threading.current_thread() is not threading.main_thread()
        seen["loop_ran_meanwhile"] = freed.wait(5.0)
        return decide(*args)

    monkeypatch.setattr(core, "plan", held)
    return freed, seen


def test_the_scheduling_pass_decides_in_a_thread_while_the_event_loop_serves(tmp_path, monkeypatch):
    """Before: ``plan`` ran on the event loop, so 10,000 queued jobs held every client ~100 ms a pass."""
    daemon = _daemon(tmp_path)
    ids = _queue(daemon.store, 50)
    freed, seen = _hold_the_decision(monkeypatch)

    async def one_pass() -> None:
        asyncio.get_running_loop().call_later(0.01, freed.set)  # fires only if the loop is free during the pass
        await daemon.schedule_pass()

    asyncio.run(asyncio.wait_for(one_pass(), 20))
    assert seen == {"off_the_loop_thread": True, "loop_ran_meanwhile": True}
    assert set(daemon.waiting) == set(ids) and daemon.last_pass[0] == 50
    assert all(r.startswith("user limit: ") for r in daemon.waiting.values())


def test_a_job_cancelled_while_the_pass_decides_is_not_started(tmp_path, monkeypatch):
    """The decision is made on a snapshot; the job it would start was cancelled meanwhile: skipped."""
    daemon = _daemon(tmp_path, Limits())
    [job_id] = _queue(daemon.store, 1)
    freed, seen = _hold_the_decision(monkeypatch)

    def cancel_then_free() -> None:
        daemon.cancel(daemon.store.get(job_id), Identity(1000, 1000, "u0", (), admin=False, sees_all=False))
        freed.set()

    async def one_pass() -> None:
        asyncio.get_running_loop().call_later(0.01, cancel_then_free)
        await daemon.schedule_pass()

    asyncio.run(asyncio.wait_for(one_pass(), 20))
    assert seen["loop_ran_meanwhile"]
    job = daemon.store.get(job_id)
    assert (job.state, job.pid) == (State.CANCELLED, None)
    assert [e["to_state"] for e in daemon.store.events(job_id=job_id)] == ["queued", "cancelled"]


def test_the_queue_and_the_counts_come_from_memory_and_follow_every_commit(tmp_path):
    """Before: every pass read (and JSON-decoded) every queued row, every scrape counted every row."""
    store = Store(tmp_path / "db")
    ids = _queue(store, 5)
    store.transition(ids[1], State.CANCELLED, "by u1")
    store.transition(ids[3], State.PLACING, "free", gpu_ids=[])
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    queued = store.queue()
    assert [q.id for q in queued] == [ids[0], ids[2], ids[4]]
    assert store.counts() == {**{s.value: 0 for s in State}, "queued": 3, "cancelled": 1, "placing": 1}
    assert statements == []
    store.close()
    reopened = Store(tmp_path / "db")  # rebuilt from the rows
    assert reopened.queue() == queued
    assert reopened.counts()["queued"] == 3 and reopened.counts()["placing"] == 1


def test_listings_are_pages_back_from_the_newest(tmp_path):
    store = Store(tmp_path / "db")
    ids = _queue(store, 7)
    assert [j.id for j in store.list(limit=3)] == ids[-3:]
    assert [j.id for j in store.list(limit=3, before=ids[-3])] == ids[-6:-3]
    assert [j.id for j in store.list(uid=1000, limit=10, before=ids[-1])] == [ids[0], ids[3]]


def test_the_pass_forgets_what_ended_jobs_asked(tmp_path):
    """Before: every job's memory ask stayed cached for the daemon's life, one entry per job ever queued."""
    daemon = _daemon(tmp_path)
    ids = _queue(daemon.store, 4)
    asyncio.run(daemon.schedule_pass())
    assert set(daemon._asks) == set(ids)
    for job_id in ids[:3]:
        daemon.store.transition(job_id, State.CANCELLED, "by its user")
    asyncio.run(daemon.schedule_pass())
    assert set(daemon._asks) == {ids[3]}
