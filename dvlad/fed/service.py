"""The federation of one daemon: its secret, peers, leases, parts and coordinator, and the loops that
keep them current (heartbeats out; lease expiry and the coordinator's rounds).

Why created with the :class:`~dvlad.server.core.Daemon`, before its scheduling loop runs: a multi-node
job recovered from the store must meet a daemon that knows how to coordinate it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

from dvla.spec import SpecError, spec_from_dict
from dvla.topology import islands
from dvlad.config import Config
from dvlad.fed import heartbeat
from dvlad.fed.client import PeerClient
from dvlad.fed.coordinator import Coordinator
from dvlad.fed.parts import PartHost
from dvlad.fed.peers import PeerTable
from dvlad.fed.records import Records
from dvlad.fed.secret import load_secret
from dvlad.fed.signing import Verifier
from dvlad.server.core import Daemon
from dvlad.server.host import HostLoad
from dvlad.store import Job

log = logging.getLogger("dvlad")


class Federation:
    def __init__(self, config: Config, daemon: Daemon, host_load: HostLoad, state_dir: Path):
        fed = config.federation
        self.config, self.daemon, self.host_load = fed, daemon, host_load
        secret = load_secret(Path(fed.secret_file))
        self.name = fed.name or socket.gethostname()
        self.addr = fed.advertise or config.daemon.tcp
        self.verifier = Verifier(secret, fed.replay_window_s)
        self.client = PeerClient(secret, self.name, fed.tls_ca)
        self.peers = PeerTable(fed.peers, fed.down_after_s)
        self.records = Records(state_dir / "fed.db")
        self.parts = PartHost(daemon, self.records, fed.lease_ttl_s)
        self.coordinator = Coordinator(daemon, self.client, self.peers, self.records, self.name,
                                       self.addr.rpartition(":")[0].strip("[]"))
        daemon.federation = self

    def multi_node(self, job: Job) -> bool:
        try:
            return spec_from_dict(job.spec).placement.nodes > 1
        except SpecError:
            return False

    def coordinate(self, job: Job, gpu_ids: list[int]) -> None:
        self.coordinator.coordinate(job, gpu_ids)

    def local_row(self) -> dict[str, Any]:
        """This node as a heartbeat carries it and ``GET /v1/nodes`` lists it: also its free GPUs' ids,
        a topology summary (NVLink islands), the memory jobs that share GPUs took of each (``pools``)
        and the leases it holds for coordinators."""
        row = self.daemon.node(self.host_load.reading())
        topology = self.daemon.inventory.topology
        shared = self.daemon.cluster()[0].shared
        return {**row, "name": self.name, "addr": self.addr, "state": "up", "last_heartbeat_age_s": 0.0,
                "free_gpus": [g["index"] for g in row["gpus"] if g["free"]],
                "topology": {"host": topology.get("host", ""), "islands": islands(topology)},
                "pools": [{"gpu": g, "taken": taken, "room": shared.room(g)}
                          for g, taken in sorted(shared.taken.items())],
                "leases": [lease.public() for lease in self.daemon.leases.held.values()]}

    def rows(self) -> list[dict[str, Any]]:
        """Every node: this one first, then the peers in the config's order."""
        return [self.local_row(), *(self.peers.row(p) for p in self.peers.peers.values())]

    async def _watch(self) -> None:
        """Every heartbeat period: free expired leases, stop parts left without one, then renew and check
        this coordinator's jobs."""
        while True:
            try:
                self.parts.expire()
                self.parts.sweep()
                await self.coordinator.round()
            except Exception:  # one bad round must not end federation
                log.exception("a federation round failed")
            await asyncio.sleep(self.config.heartbeat_s)

    def tasks(self) -> list[asyncio.Task]:
        return [asyncio.create_task(heartbeat.run(self.client, self.peers, self.local_row, self.config.heartbeat_s),
                                    name="fed-heartbeat"),
                asyncio.create_task(self._watch(), name="fed-watch")]

    async def close(self) -> None:
        await self.client.close()
        self.records.close()
