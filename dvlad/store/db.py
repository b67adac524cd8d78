"""The job store: one SQLite database in WAL mode under the state dir.

Why SQLite with ``synchronous=FULL``: a submit is acknowledged only after its transaction is on
disk, so a daemon killed (or a machine losing power) right after replying never forgets a job it
acknowledged. The idempotency key is unique per user, so a client that retries after a lost reply
gets the job it already made instead of a second one.

Why the queue and the per-state counts are also kept in memory: the scheduler reads the whole queue
at every pass and ``/metrics`` counts every state at every scrape; read from SQLite, 10,000 queued jobs
cost ~50 ms of the daemon's event loop a pass. The store makes every state change itself
(:meth:`Store.submit`, :meth:`Store.transition`), so it updates both after each commit, and rebuilds
them from the database when it opens: they cannot drift from the rows. For the same reason it keeps
the ``RECENT`` records last read or written: a status GET or a page of listing reads them from
memory (decoding a row is most of a listing's cost), and a record changes only through the store,
which replaces it there as it commits.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dvlad.store.states import TERMINAL, TRANSITIONS, IllegalTransition, State

RECENT = 4096
"""Job records kept decoded in memory (a few MB): more than a page of listings and every active job."""
PAGE_ROWS = 500
"""Rows read per ``IN (...)`` query (under SQLite's bound on a statement's parameters)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    user TEXT NOT NULL,
    groups TEXT NOT NULL,             -- JSON list of group names at submit time (for group limits)
    idempotency_key TEXT,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    gpus INTEGER NOT NULL,
    cpus INTEGER NOT NULL,
    spec TEXT NOT NULL,               -- JSON: the resolved spec (spec_to_dict)
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    submitted_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    gpu_ids TEXT NOT NULL DEFAULT '[]',
    pid INTEGER,
    pid_start REAL,                   -- psutil create_time of pid: a recycled pid never matches
    exit_code INTEGER,
    UNIQUE (uid, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_uid ON jobs (uid, id);  -- a user's latest jobs without a sort
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (user, id);  -- the same by name (GET /v1/jobs?user=NAME)
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    ts REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
"""


@dataclass
class Request:
    """Who asked (from the connection, never the body) and what the job needs."""

    uid: int
    gid: int
    user: str
    groups: list[str]
    """Group names at submit time: group limits apply to these."""
    idempotency_key: str | None
    name: str
    priority: int
    gpus: int
    cpus: int


@dataclass
class Submission(Request):
    """A job to record, with its resolved spec."""

    spec: dict[str, Any]


@dataclass
class Job(Request):
    id: int
    spec_json: str
    """The resolved spec as stored; parsed only when asked for (listings never need it)."""
    state: State
    reason: str
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    gpu_ids: list[int] = field(default_factory=list)
    pid: int | None = None
    pid_start: float | None = None
    exit_code: int | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return json.loads(self.spec_json)

    def public(self) -> dict[str, Any]:
        """What the API shows of a job (the spec only on request: it is large)."""
        return {k: getattr(self, k) for k in (
            "id", "user", "uid", "name", "priority", "gpus", "cpus", "state", "reason", "submitted_at",
            "started_at", "ended_at", "gpu_ids", "pid", "exit_code")}


class Queued(NamedTuple):
    """What the scheduler needs of a queued job (:meth:`Store.queue`): the fields, in the order, of
    ``dvlad.sched.QueuedJob``, which the store may not import."""

    id: int
    user: str
    groups: tuple[str, ...]
    priority: int
    gpus: int
    cpus: int


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["groups"] = json.loads(d["groups"])
    d["spec_json"] = d.pop("spec")
    d["gpu_ids"] = json.loads(d["gpu_ids"])
    d["state"] = State(d["state"])
    return Job(**d)


class Store:
    """All reads and writes of job records; every state change writes its event in the same transaction."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._queued: dict[int, Queued] = {}
        """Every queued job in submit order (ids only grow, and a dict keeps insertion order)."""
        for r in self._db.execute("SELECT id, user, groups, priority, gpus, cpus FROM jobs WHERE state = ? ORDER BY id",
                                  (State.QUEUED.value,)):
            self._queued[r["id"]] = Queued(r["id"], r["user"], tuple(json.loads(r["groups"])), r["priority"],
                                           r["gpus"], r["cpus"])
        self._recent: OrderedDict[int, Job] = OrderedDict()
        self._counts = {s.value: 0 for s in State}
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            self._counts[state] = n

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def submit(self, *submissions: Submission) -> list[tuple[Job, bool]]:
        """Record queued jobs in one transaction, committed (one fsync) before returning.

        Why several at once: the commit's fsync is a submit's whole cost, so concurrent submits
        share one (group commit). Each result is (job, created): an idempotency key its user
        already used returns the job it made, with created False (also inside one batch)."""
        out = []
        with self._tx() as db:
            for sub in submissions:
                if sub.idempotency_key is not None:
                    row = db.execute("SELECT * FROM jobs WHERE uid = ? AND idempotency_key = ?",
                                     (sub.uid, sub.idempotency_key)).fetchone()
                    if row is not None:
                        out.append((_job(row), False))
                        continue
                now = time.time()
                cur = db.execute(
                    "INSERT INTO jobs (uid, gid, user, groups, idempotency_key, name, priority, gpus, cpus, spec,"
                    " state, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sub.uid, sub.gid, sub.user, json.dumps(sub.groups), sub.idempotency_key, sub.name, sub.priority,
                     sub.gpus, sub.cpus, json.dumps(sub.spec), State.QUEUED.value, now))
                db.execute("INSERT INTO events (job_id, ts, from_state, to_state, reason) VALUES (?, ?, NULL, ?, ?)",
                           (cur.lastrowid, now, State.QUEUED.value, f"submitted by {sub.user}"))
                out.append((_job(db.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone()), True))
        for job, created in out:  # committed: now the memory may show them
            self._remember(job)
            if created:
                self._queued[job.id] = Queued(job.id, job.user, tuple(job.groups), job.priority, job.gpus, job.cpus)
                self._counts[State.QUEUED.value] += 1
        return out

    def _remember(self, job: Job) -> Job:
        """Keep ``job`` as the latest of the ``RECENT`` (records are never changed in place)."""
        self._recent[job.id] = job
        self._recent.move_to_end(job.id)
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return job

    def get(self, job_id: int) -> Job | None:
        if (job := self._recent.get(job_id)) is not None:
            return self._remember(job)
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._remember(_job(row)) if row else None

    def list(self, *, uid: int | None = None, user: str | None = None, states: frozenset[State] | None = None,
             before: int | None = None, limit: int = 1000) -> list[Job]:
        """The latest ``limit`` jobs in submit order, optionally of one user (by uid or by name) and/or in
        some states, and/or with ids below ``before`` (the next page back). Filtered here, before the
        limit, so a user's latest are found among everyone's; each filter is an index's range, so a
        page costs its own rows, not the table's. The ids come from the indexes; the records from
        memory where they are, else from one read per ``PAGE_ROWS``."""
        sql, args = "SELECT id FROM jobs WHERE 1=1", []
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        if uid is not None:
            sql += " AND uid = ?"
            args.append(uid)
        if user is not None:
            sql += " AND user = ?"
            args.append(user)
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += [s.value for s in states]
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        ids = [r[0] for r in reversed(self._db.execute(sql, args).fetchall())]
        found = {i: job for i in ids if (job := self._recent.get(i)) is not None}
        missing = [i for i in ids if i not in found]
        for start in range(0, len(missing), PAGE_ROWS):
            chunk = missing[start:start + PAGE_ROWS]
            for row in self._db.execute(f"SELECT * FROM jobs WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                found[row["id"]] = self._remember(_job(row))
        return [found[i] for i in ids]

    def queue(self) -> list[Queued]:
        """Every queued job, in submit order, from memory: a copy of the list, the records immutable,
        so a scheduling pass may read it in another thread while the store moves on."""
        return list(self._queued.values())

    def counts(self) -> dict[str, int]:
        """Jobs per state, every state present (zero where none), from memory."""
        return dict(self._counts)

    def transition(self, job_id: int, to: State, reason: str, **fields: Any) -> Job:
        """Move a job to ``to`` (refusing moves the state table forbids), set ``fields`` and write
        the event, all in one transaction."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            current = State(row["state"])
            if to not in TRANSITIONS[current]:
                raise IllegalTransition(job_id, current, to)
            now = time.time()
            if to is State.RUNNING:
                fields.setdefault("started_at", now)
            if to in TERMINAL:
                fields.setdefault("ended_at", now)
            if "gpu_ids" in fields:
                fields["gpu_ids"] = json.dumps(fields["gpu_ids"])
            assignments = ", ".join(f"{k} = ?" for k in ("state", "reason", *fields))
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?",
                       (to.value, reason, *fields.values(), job_id))
            db.execute("INSERT INTO events (job_id, ts, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                       (job_id, now, current.value, to.value, reason))
            out = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        self._queued.pop(job_id, None)  # committed; no state leads back to queued
        self._counts[current.value] -= 1
        self._counts[to.value] += 1
        return self._remember(_job(out))

    def events(self, *, after: int = 0, job_id: int | None = None, uid: int | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
        """Events with id > ``after`` in order, optionally of one job or one user's jobs."""
        sql = ("SELECT e.id, e.job_id, e.ts, e.from_state, e.to_state, e.reason FROM events e"
               " JOIN jobs j ON j.id = e.job_id WHERE e.id > ?")
        args: list[Any] = [after]
        if job_id is not None:
            sql += " AND e.job_id = ?"
            args.append(job_id)
        if uid is not None:
            sql += " AND j.uid = ?"
            args.append(uid)
        sql += " ORDER BY e.id LIMIT ?"
        args.append(limit)
        return [dict(r) for r in self._db.execute(sql, args)]
