"""The peer's side of a multi-node job: leases on this node's room, and the node parts started under
them as local jobs of the store, run as the coordinator's user (looked up here by name).

Why a part is a job of this node's store: the scheduler then counts its GPUs and CPU slots, the
supervisor runs, re-adopts and settles it like any job, and its user sees it in ``dvla ls`` on this
node (its reason says whose part it is).
"""

from __future__ import annotations

import contextlib
import logging
import pwd
from typing import Any

from dvla.spec import spec_from_dict, spec_to_dict
from dvlad.config import job_cpu_slots
from dvlad.fed.leases import Lease
from dvlad.fed.records import Records
from dvlad.gpu.layout import best_linked
from dvlad.server.auth import identity_of, sole_user
from dvlad.server.core import Daemon
from dvlad.server.errors import ApiError
from dvlad.store import ACTIVE, TERMINAL, IllegalTransition, Job, State, Submission

log = logging.getLogger("dvlad")
ENV_KEYS = ("DVLA_NODES", "DVLA_NODE_RANK", "DVLA_FED_RENDEZVOUS", "DVLA_RANK_OFFSET", "DVLA_WORLD")
"""What a coordinator may set in a part's environment (nothing else of its request reaches the job)."""


class PartHost:
    def __init__(self, daemon: Daemon, records: Records, lease_ttl_s: float):
        self.daemon, self.records, self.lease_ttl_s = daemon, records, lease_ttl_s

    def grant(self, coordinator: str, job_id: int, gpus: int, cpus: int) -> Lease:
        """A lease on ``gpus`` free GPUs (the best-linked) and ``cpus`` free CPU slots, or 409."""
        cluster, _ = self.daemon.cluster()
        if gpus > len(cluster.free_gpus) or cpus > cluster.free_cpus:
            raise ApiError(409, "no_room", f"asked for {gpus} GPUs and {cpus} CPU slots; "
                                           f"{len(cluster.free_gpus)} GPUs and {cluster.free_cpus} CPU slots are free")
        gpu_ids = list(best_linked(sorted(cluster.free_gpus), gpus, self.daemon.inventory.topology)) if gpus else []
        lease = self.daemon.leases.grant(coordinator, job_id, gpu_ids, cpus, self.lease_ttl_s)
        log.info("lease granted", extra={"lease": lease.id, "coordinator": coordinator, "job": job_id,
                                         "gpus": gpu_ids, "cpus": cpus})
        return lease

    def lease(self, lease_id: str, coordinator: str) -> Lease:
        lease = self.daemon.leases.held.get(lease_id)
        if lease is None or lease.coordinator != coordinator:
            raise ApiError(404, "not_found", f"no lease {lease_id!r} of {coordinator} here (expired, released, "
                                             "or this dvlad restarted)", field="lease_id")
        return lease

    def start(self, coordinator: str, body: dict[str, Any]) -> Job:
        """Start the node part ``body`` asks for under its lease, as its user; the part's job."""
        lease = self.lease(str(body.get("lease_id", "")), coordinator)
        user = body.get("user")
        if not isinstance(user, str) or not user:
            raise ApiError(400, "bad_field", "expected the user's name", field="user")
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ApiError(403, "no_such_user", f"user {user!r} does not exist on this node; a multi-node job's "
                                                "user must exist on every node (same name)", field="user") from None
        if (sole := sole_user(self.daemon.config.personal)) is not None and entry.pw_uid != sole:
            raise ApiError(403, "forbidden", f"this dvlad is uid {sole}'s own and runs jobs only as that user, "
                                             f"not as {user}", field="user")
        env = body.get("env")
        if not isinstance(env, dict) or set(env) != set(ENV_KEYS) or not all(isinstance(v, str) for v in env.values()):
            raise ApiError(400, "bad_field", f"expected exactly {', '.join(ENV_KEYS)} as strings", field="env")
        spec = spec_from_dict(body.get("spec") or {})  # SpecError: the route answers 400 with the issues
        if spec.resources.gpus != len(lease.gpu_ids) or job_cpu_slots(spec.env.workers) != lease.cpus:
            raise ApiError(400, "bad_field", "the spec asks for other resources than its lease holds", field="spec")
        who = identity_of(entry.pw_uid, None, self.daemon.config.daemon)
        key = f"fed:{lease.id}"
        (job, created), = self.daemon.store.submit(Submission(
            uid=who.uid, gid=who.gid, user=who.user, groups=list(who.groups), idempotency_key=key[:128],
            name=spec.job.name, priority=0, gpus=len(lease.gpu_ids), cpus=lease.cpus, spec=spec_to_dict(spec)))
        if not created:  # a retried request: the part it started
            return job
        self.records.save_part(job.id, coordinator, lease.job_id)
        lease.part_id = job.id
        job = self.daemon.store.transition(job.id, State.PLACING, f"node part {env['DVLA_NODE_RANK']} of job "
                                           f"{lease.job_id} on {coordinator}", gpu_ids=lease.gpu_ids)
        job = self.daemon.supervisor.start(job, lease.gpu_ids, env, note=f" (node part {env['DVLA_NODE_RANK']}/"
                                           f"{env['DVLA_NODES']} of job {lease.job_id} on {coordinator})")
        log.info("node part started", extra={"job": job.id, "coordinator": coordinator, "of_job": lease.job_id,
                                             "user": who.user, "state": job.state.value})
        return job

    def part(self, part_id: int, coordinator: str) -> Job:
        owner = self.records.part_owner(part_id)
        job = self.daemon.store.get(part_id)
        if owner is None or owner[0] != coordinator or job is None:
            raise ApiError(404, "not_found", f"no node part {part_id} of {coordinator} here", field="part_id")
        return job

    def stop(self, job: Job, why: str) -> None:
        """Stop a part that is still active (cancelled, with ``why`` as the reason)."""
        if job.state in TERMINAL or job.state is State.CANCELLING:
            return
        with contextlib.suppress(IllegalTransition):
            self.daemon.supervisor.cancel(job, why)
            self.daemon.kick()

    def release(self, lease: Lease, why: str) -> None:
        """Drop ``lease`` (already removed from the table) and stop its part if it is still active."""
        log.info("lease released", extra={"lease": lease.id, "coordinator": lease.coordinator, "reason": why})
        if lease.part_id is not None and (job := self.daemon.store.get(lease.part_id)) is not None:
            self.stop(job, why)
        self.daemon.kick()

    def expire(self) -> None:
        """Free the leases whose coordinator stopped renewing them, stopping their parts."""
        for lease in self.daemon.leases.expired():
            log.warning("lease expired", extra={"lease": lease.id, "coordinator": lease.coordinator})
            self.release(lease, f"dvlad: the lease expired (coordinator {lease.coordinator} stopped renewing it)")

    def sweep(self) -> None:
        """Stop the active parts no lease holds any more: this dvlad restarted (leases live in memory),
        so no coordinator renews them and nothing else would ever stop them."""
        held = {lease.part_id for lease in self.daemon.leases.held.values()}
        for job in self.daemon.store.list(states=ACTIVE, limit=1 << 30):
            if job.id not in held and job.state is not State.CANCELLING and self.records.part_owner(job.id):
                log.warning("node part without a lease; stopping it", extra={"job": job.id})
                self.stop(job, "dvlad: its lease was lost (this dvlad restarted)")

    @staticmethod
    def state(job: Job) -> dict[str, Any]:
        return {"part_id": job.id, "state": job.state.value, "reason": job.reason, "active": job.state in ACTIVE}
