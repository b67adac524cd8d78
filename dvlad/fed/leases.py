"""Leases: GPUs and CPU slots of this node held for a coordinator's multi-node job, for a while.

Why a time to live: the coordinator renews its leases while the job lives; if it dies, or the network
between them breaks, nothing would ever release them. An expired lease frees its room, and the node
part started under it is stopped. Kept in memory: a restarted daemon has no leases, and a coordinator's
next renewal is refused (404), which fails its job; the parts themselves are jobs of the store.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Lease:
    id: str
    coordinator: str
    """The node name of the daemon that took it."""
    job_id: int
    """The coordinator's job."""
    gpu_ids: list[int]
    cpus: int
    ttl_s: float
    expires_at: float
    """Monotonic."""
    part_id: int | None = None
    """The local job (node part) started under it; while it is active, the part's record holds the room."""

    def public(self, now: float | None = None) -> dict[str, Any]:
        left = self.expires_at - (time.monotonic() if now is None else now)
        return {"id": self.id, "coordinator": self.coordinator, "job_id": self.job_id, "gpu_ids": self.gpu_ids,
                "cpus": self.cpus, "ttl_s": self.ttl_s, "expires_in_s": round(left, 2), "part_id": self.part_id}


class NoRoom(Exception):
    """The lease asked for more than is free here."""


class Leases:
    def __init__(self) -> None:
        self.held: dict[str, Lease] = {}
        self._ids = itertools.count(1)

    def grant(self, coordinator: str, job_id: int, gpu_ids: list[int], cpus: int, ttl_s: float) -> Lease:
        lease = Lease(f"{coordinator}-{job_id}-{next(self._ids)}-{int(time.time())}", coordinator, job_id,
                      sorted(gpu_ids), cpus, ttl_s, time.monotonic() + ttl_s)
        self.held[lease.id] = lease
        return lease

    def renew(self, lease_id: str) -> Lease | None:
        lease = self.held.get(lease_id)
        if lease is not None:
            lease.expires_at = time.monotonic() + lease.ttl_s
        return lease

    def release(self, lease_id: str) -> Lease | None:
        return self.held.pop(lease_id, None)

    def expired(self) -> list[Lease]:
        """Remove and return the leases whose time ran out."""
        now = time.monotonic()
        gone = [lease for lease in self.held.values() if lease.expires_at <= now]
        for lease in gone:
            del self.held[lease.id]
        return gone

    def reserved(self, active_parts: set[int]) -> tuple[set[int], int]:
        """GPUs and CPU slots the leases hold beyond what their parts' records already count (a lease
        whose part runs holds nothing more: the part's record holds the same room)."""
        gpus: set[int] = set()
        cpus = 0
        for lease in self.held.values():
            if lease.part_id is None or lease.part_id not in active_parts:
                gpus.update(lease.gpu_ids)
                cpus += lease.cpus
        return gpus, cpus
