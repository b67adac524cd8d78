"""The coordinator of a multi-node job: the daemon it was submitted to.

It places the job's node parts on itself and on the up peers with the most free room, takes a lease
on each peer, asks each to start its part (as the job's user, with the rendezvous address), then
starts its own part (node rank 0). Every heartbeat round it renews the leases, which also brings back
each part's state; a part that failed, a peer that went down or lost its lease fails the job (its
other parts stopped); a job that ended, however, has its parts stopped and leases released.

Why the coordinator's own part is the job's process: it writes the checkpoints and metrics rows into
the job's run directory here, and the supervisor settles the job from it as it does any job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from dvla.spec import JobSpec, spec_from_dict
from dvlad.fed.client import PeerClient, PeerError
from dvlad.fed.peers import Peer, PeerTable
from dvlad.fed.records import Records, RemotePart
from dvlad.gpu.layout import plan_layout
from dvlad.ports import free_port
from dvlad.runtime.launch import run_dir
from dvlad.server.core import Daemon
from dvlad.server.transfer import Unlisted, checkpoint_files
from dvlad.store import TERMINAL, IllegalTransition, Job, State, Submission

log = logging.getLogger("dvlad")


def learners_per_node(spec: JobSpec) -> int:
    """The learner ranks one node part runs: its devices' layout, as the job plans it."""
    devices = spec.resources.gpus or spec.placement.cpu_devices or 1
    if devices == 1:
        return 1
    plan = plan_layout(range(devices), None, layout=spec.placement.layout, learners=spec.placement.learner_gpus,
                       workers=spec.env.workers, groups=spec.env.groups, fanout=spec.placement.replication_fanout)
    return len(plan.learner_devices)


def _free(peer: Peer) -> tuple[int, int]:
    report = peer.report
    return len(report.get("free_gpus", [])), int(report.get("free_cpu_slots", 0))


class Coordinator:
    def __init__(self, daemon: Daemon, client: PeerClient, peers: PeerTable, records: Records, name: str,
                 host: str):
        self.daemon, self.client, self.peers, self.records = daemon, client, peers, records
        self.name, self.host = name, host
        self.jobs: dict[int, list[RemotePart]] = records.coordinated()
        """This coordinator's multi-node jobs that still have parts or leases on peers."""
        self._placing: dict[int, asyncio.Task] = {}
        """Jobs being placed now: the rounds leave them alone until their task ends."""

    def coordinate(self, job: Job, gpu_ids: list[int]) -> None:
        """Place and start a job that is ``placing`` on this node's ``gpu_ids`` (runs on, in a task)."""
        task = asyncio.get_running_loop().create_task(self._place(job, gpu_ids))
        self._placing[job.id] = task
        task.add_done_callback(lambda _: self._placing.pop(job.id, None))

    def _fail(self, job_id: int, reason: str) -> None:
        """Fail the job (if it has not ended) and stop its process here; its peers' parts follow at the next round."""
        with contextlib.suppress(IllegalTransition):
            self.daemon.store.transition(job_id, State.FAILED, reason)
            log.warning("multi-node job failed", extra={"job": job_id, "reason": reason})
        self.daemon.supervisor.terminate(job_id)
        self.daemon.kick()

    def _node_failed(self, job: Job, reason: str) -> None:
        """Fail a job whose node went down, and submit it again when its spec asks for that."""
        if job.state is State.RUNNING and spec_from_dict(job.spec).train.restart_on_node_failure:
            again, warm = self._resubmit(job)
            reason += f"; restarted as job {again.id} " + ("from its last checkpoint" if warm else
                                                             "from the start (it had written no checkpoint)")
        self._fail(job.id, reason)

    def _resubmit(self, job: Job) -> tuple[Job, bool]:
        """A copy of ``job`` queued as a new job of the same user, its policy starting from the job's last
        checkpoint if it wrote one (whether it did); one copy per job, however often this is asked."""
        spec = job.spec
        run = run_dir(self.daemon.supervisor.state_dir, job.id)
        try:
            warm = bool(checkpoint_files(run))
        except Unlisted:  # a run directory too large to look through: from the start
            warm = False
        if warm:
            spec["policy"]["checkpoint"] = str(run)
        (again, _), = self.daemon.store.submit(Submission(
            uid=job.uid, gid=job.gid, user=job.user, groups=list(job.groups), idempotency_key=f"fed-restart-{job.id}",
            name=job.name, priority=job.priority, gpus=job.gpus, cpus=job.cpus, spec=spec))
        log.warning("multi-node job restarted after a node failure", extra={"job": job.id, "as_job": again.id})
        return again, warm

    async def _place(self, job: Job, gpu_ids: list[int]) -> None:
        spec = spec_from_dict(job.spec)
        nodes = spec.placement.nodes
        parts: list[RemotePart] = []
        self.jobs[job.id] = parts
        try:
            candidates = sorted((p for p in self.peers.peers.values() if self.peers.up(p)
                                 and _free(p)[0] >= job.gpus and _free(p)[1] >= job.cpus),
                                key=lambda p: _free(p), reverse=True)
            for peer in candidates:
                if len(parts) == nodes - 1:
                    break
                try:
                    lease = await self.client.call(peer.addr, "POST", "/v1/fed/leases",
                                                   {"job_id": job.id, "gpus": job.gpus, "cpus": job.cpus})
                except PeerError as exc:
                    log.info("a peer refused a lease", extra={"job": job.id, "peer": peer.addr, "reason": exc.reason})
                    continue
                parts.append(RemotePart(len(parts) + 1, peer.name, peer.addr, lease["id"]))
                self.records.save_coordinated(job.id, parts)
            if len(parts) < nodes - 1:
                up = sum(self.peers.up(p) for p in self.peers.peers.values())
                self._fail(job.id, f"needs {nodes} nodes with {job.gpus} GPUs and {job.cpus} CPU slots free each: "
                                   f"this node and {len(parts)} of its {up} up peers had them")
                return
            per_node = learners_per_node(spec)
            rendezvous = f"tcp://{self.host}:{free_port(self.host)}"

            def env(rank: int) -> dict[str, str]:
                return {"DVLA_NODES": str(nodes), "DVLA_NODE_RANK": str(rank), "DVLA_FED_RENDEZVOUS": rendezvous,
                        "DVLA_RANK_OFFSET": str(rank * per_node), "DVLA_WORLD": str(nodes * per_node)}

            for part in parts:
                started = await self.client.call(part.addr, "POST", "/v1/fed/parts", {
                    "lease_id": part.lease_id, "user": job.user, "spec": job.spec, "env": env(part.rank)})
                part.part_id, part.state = started["part_id"], started["state"]
                self.records.save_coordinated(job.id, parts)
                if not started["active"]:
                    raise PeerError(part.node, 0, f"its part could not start: {started['reason']}")
            if self.daemon.store.get(job.id).state is not State.PLACING:  # cancelled meanwhile
                return
            where = ", ".join(f"{p.node} (part {p.part_id})" for p in parts)
            self.daemon.supervisor.start(job, gpu_ids, env(0), note=f"; node 0 of {nodes}, with {where}")
            self.daemon.kick()
        except PeerError as exc:
            self._fail(job.id, f"could not start on node {exc.peer}: {exc.reason}")
        except Exception as exc:
            log.exception("placing a multi-node job failed", extra={"job": job.id})
            self._fail(job.id, f"could not place it: {exc}")

    async def round(self) -> None:
        """Renew every lease and check every part; settle the jobs that ended (every heartbeat round)."""
        await asyncio.gather(*(self._check(job_id, parts) for job_id, parts in list(self.jobs.items())
                               if job_id not in self._placing))

    async def _check(self, job_id: int, parts: list[RemotePart]) -> None:
        job = self.daemon.store.get(job_id)
        if job is None or job.state in TERMINAL:
            await self._wind_down(job, job_id, parts)
            return
        for part in parts:
            peer = self.peers.peers.get(part.addr)
            if peer is not None and self.peers.down(peer):
                self._node_failed(job, f"node {part.node} down: no heartbeat for {self.peers.silent_for(peer):.0f} s")
                return
            try:
                reply = await self.client.call(part.addr, "POST", f"/v1/fed/leases/{part.lease_id}/renew")
            except PeerError as exc:
                if exc.status == 404:
                    self._node_failed(job, f"node {part.node} lost the job's lease: {exc.reason}")
                    return
                continue  # unreachable once: its heartbeats decide whether it is down
            state = reply.get("part")
            if state is None:
                continue
            part.state = state["state"]
            if state["state"] in ("failed", "cancelled"):
                self._fail(job_id, f"node {part.node} part {part.part_id} {state['state']}: {state['reason']}")
                return
        self.records.save_coordinated(job_id, parts)

    async def _wind_down(self, job: Job | None, job_id: int, parts: list[RemotePart]) -> None:
        """Stop the ended job's parts that still run and release its leases; forget it once every up
        peer has done so (a down peer's leases run out on their own).

        A job that succeeded gives its parts ``down_after_s`` to end on their own (its node 0 ended
        first; the ranks stop together, so the others follow within moments) before they are stopped."""
        done = True
        for part in parts:
            peer = self.peers.peers.get(part.addr)
            if part.state == "released" or (peer is not None and self.peers.down(peer)):
                continue
            try:
                if job is not None and job.state is State.SUCCEEDED and part.state in ("placing", "running") \
                        and time.time() - (job.ended_at or 0) < self.peers.down_after_s:
                    reply = await self.client.call(part.addr, "POST", f"/v1/fed/leases/{part.lease_id}/renew")
                    part.state = (reply.get("part") or {}).get("state", part.state)
                    if part.state in ("placing", "running", "cancelling"):
                        done = False
                        continue
                await self.client.call(part.addr, "DELETE", f"/v1/fed/leases/{part.lease_id}")
                part.state = "released"
            except PeerError as exc:
                if exc.status == 404:
                    part.state = "released"
                else:
                    done = False
        if done:
            self.jobs.pop(job_id, None)
            self.records.forget_coordinated(job_id)
            log.info("multi-node job wound down", extra={"job": job_id, "reason": job.reason[:200] if job else "gone"})
        else:
            self.records.save_coordinated(job_id, parts)

    def public(self, job_id: int) -> list[dict[str, Any]] | None:
        """The job's parts on peers, for ``GET /v1/jobs/ID`` (None for a job of one node)."""
        parts = self.jobs.get(job_id)
        return None if parts is None else [vars(p) for p in parts]
