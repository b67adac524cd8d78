"""The store: durable submits, idempotency per user, only legal transitions, an event for each."""

from __future__ import annotations

import pytest

from dvlad.store import IllegalTransition, State, Store, Submission


def submission(uid=1000, key=None, name="j"):
    return Submission(uid=uid, gid=uid, user=f"u{uid}", groups=["g"], idempotency_key=key, name=name,
                      priority=0, gpus=0, cpus=1, spec={"job": {"name": name}})


def submit(store, uid=1000, key=None, name="j"):
    return store.submit(submission(uid, key, name))[0]


def test_idempotency_key_is_per_user(tmp_path):
    store = Store(tmp_path / "db")
    a, created_a = submit(store, key="k1")
    again, created_again = submit(store, key="k1")
    other, created_other = submit(store, uid=1001, key="k1")
    assert created_a and not created_again and created_other
    assert again.id == a.id and other.id != a.id


def test_survives_reopen(tmp_path):
    store = Store(tmp_path / "db")
    job, _ = submit(store, key="x")
    store.close()
    reopened = Store(tmp_path / "db")
    assert reopened.get(job.id).state is State.QUEUED
    assert submit(reopened, key="x")[0].id == job.id


def test_transitions_write_events_and_refuse_illegal_moves(tmp_path):
    store = Store(tmp_path / "db")
    job, _ = submit(store)
    store.transition(job.id, State.PLACING, "free", gpu_ids=[0, 1])
    running = store.transition(job.id, State.RUNNING, "started", pid=42, pid_start=1.5)
    assert running.gpu_ids == [0, 1] and running.pid == 42 and running.started_at is not None
    done = store.transition(job.id, State.SUCCEEDED, "budget done", exit_code=0)
    assert done.ended_at is not None and done.reason == "budget done"
    with pytest.raises(IllegalTransition):
        store.transition(job.id, State.RUNNING, "again")
    events = store.events(job_id=job.id)
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "queued"), ("queued", "placing"), ("placing", "running"), ("running", "succeeded")]
    assert all(e["reason"] and e["ts"] > 0 for e in events)


def test_list_and_counts(tmp_path):
    store = Store(tmp_path / "db")
    a, _ = submit(store, uid=1)
    submit(store, uid=2)
    store.transition(a.id, State.CANCELLED, "by u1")
    assert [j.uid for j in store.list()] == [1, 2]
    assert [j.uid for j in store.list(uid=2)] == [2]
    assert [j.id for j in store.list(states=frozenset({State.CANCELLED}))] == [a.id]
    assert store.counts()["queued"] == 1 and store.counts()["cancelled"] == 1 and store.counts()["running"] == 0


def test_one_batch_one_transaction_keys_deduplicated_inside_it(tmp_path):
    store = Store(tmp_path / "db")
    results = store.submit(submission(key="a"), submission(key="b"), submission(key="a"), submission(uid=7, key="a"))
    assert [created for _, created in results] == [True, True, False, True]
    assert results[2][0].id == results[0][0].id
    assert len(store.list()) == 3 and len(store.events()) == 3
    assert results[0][0].spec == {"job": {"name": "j"}}
