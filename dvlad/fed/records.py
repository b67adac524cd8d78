"""What federation must not forget over a restart, in ``STATE_DIR/fed.db`` (SQLite, ``synchronous=FULL``):
the node parts each multi-node job of this coordinator has on its peers, and, on a peer, which
coordinator's job each local node part belongs to.

Why beside the job store, not in it: the jobs table stays what one node needs; a coordinator restarted
reads its multi-node jobs' parts from here (and the jobs' states from the store) and renews their
leases again, and a peer still knows whom a part belongs to when it is told to stop it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS coordinated (
    job_id INTEGER PRIMARY KEY,      -- this node's job (its store's id)
    parts TEXT NOT NULL              -- JSON list of RemotePart
);
CREATE TABLE IF NOT EXISTS parts (
    part_id INTEGER PRIMARY KEY,     -- the local job that runs the part
    coordinator TEXT NOT NULL,       -- node name of the coordinator
    job_id INTEGER NOT NULL          -- the coordinator's job
);
"""


@dataclass
class RemotePart:
    """One node part of this coordinator's job, on a peer."""

    rank: int
    node: str
    addr: str
    lease_id: str
    part_id: int | None = None
    """The peer's job id for the part, once it was started."""
    state: str = "leased"
    """The part's last known state on the peer (its job's state, or ``leased`` before it starts)."""


class Records:
    def __init__(self, path: Path):
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def save_coordinated(self, job_id: int, parts: list[RemotePart]) -> None:
        self._db.execute("INSERT OR REPLACE INTO coordinated (job_id, parts) VALUES (?, ?)",
                         (job_id, json.dumps([asdict(p) for p in parts])))

    def forget_coordinated(self, job_id: int) -> None:
        self._db.execute("DELETE FROM coordinated WHERE job_id = ?", (job_id,))

    def coordinated(self) -> dict[int, list[RemotePart]]:
        return {job_id: [RemotePart(**p) for p in json.loads(parts)]
                for job_id, parts in self._db.execute("SELECT job_id, parts FROM coordinated")}

    def save_part(self, part_id: int, coordinator: str, job_id: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO parts (part_id, coordinator, job_id) VALUES (?, ?, ?)",
                         (part_id, coordinator, job_id))

    def part_owner(self, part_id: int) -> tuple[str, int] | None:
        """The coordinator and its job of a local node part; None for a job that is no part."""
        row = self._db.execute("SELECT coordinator, job_id FROM parts WHERE part_id = ?", (part_id,)).fetchone()
        return (row[0], row[1]) if row else None
