"""What this daemon knows of its peers: each one's last heartbeat and when it came.

Why by address first: the config lists peers by ``host:port``; a peer's name is only known once it has
spoken. A peer is up while its last heartbeat is younger than ``down_after_s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Peer:
    addr: str
    name: str = ""
    heard_at: float | None = None
    """Monotonic time of its last heartbeat; None: never heard since this daemon started."""
    report: dict[str, Any] = field(default_factory=dict)
    """Its last heartbeat's body: free GPUs and CPU slots, CPU and RAM, topology summary."""
    last_error: str = ""
    """Why this daemon's last heartbeat to it failed ('' when it went through)."""

    def age(self, now: float | None = None) -> float | None:
        return None if self.heard_at is None else (time.monotonic() if now is None else now) - self.heard_at


class PeerTable:
    def __init__(self, addrs: list[str], down_after_s: float):
        self.down_after_s = down_after_s
        self.peers = {addr: Peer(addr) for addr in addrs}
        self.since = time.monotonic()

    def heard(self, report: dict[str, Any]) -> Peer | None:
        """Record a heartbeat; None if it comes from a daemon this one does not list as a peer."""
        peer = self.peers.get(str(report.get("addr", "")))
        if peer is None:
            return None
        peer.name, peer.report, peer.heard_at = str(report.get("name", "")), report, time.monotonic()
        return peer

    def up(self, peer: Peer) -> bool:
        age = peer.age()
        return age is not None and age < self.down_after_s

    def silent_for(self, peer: Peer) -> float:
        """Seconds since its last heartbeat, or since this daemon started if none came yet."""
        age = peer.age()
        return time.monotonic() - self.since if age is None else age

    def down(self, peer: Peer) -> bool:
        """Silent for ``down_after_s``. Why not merely "not up": a daemon just restarted has heard nobody
        yet, and its multi-node jobs' peers must get ``down_after_s`` to be heard before they fail them."""
        return self.silent_for(peer) >= self.down_after_s

    def row(self, peer: Peer) -> dict[str, Any]:
        """The peer as ``GET /v1/nodes`` lists it (the heartbeat's fields, its age and its state)."""
        age = peer.age()
        blank = {"gpus": [], "free_gpus": [], "cpu_slots": 0, "free_cpu_slots": 0, "running_jobs": 0, "gpu_source": "",
                 "cpu_percent": None, "cpu_count": None, "ram_used": None, "ram_total": None, "leases": []}
        return {**blank, **peer.report, "name": peer.name or peer.addr, "addr": peer.addr,
                "state": "up" if self.up(peer) else "down",
                "last_heartbeat_age_s": None if age is None else round(age, 2),
                **({"last_error": peer.last_error} if peer.last_error else {})}
