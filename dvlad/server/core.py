"""The daemon's state and actions, without HTTP: submit, cancel, and the scheduling pass.

Why separate from the routes: the routes translate HTTP to these calls and back; everything here
is what ``dvlad`` does regardless of how it was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from dvla.admission import admit
from dvla.spec import JobSpec, SpecError, spec_from_dict, spec_to_dict
from dvlad.config import Config, job_cpu_slots
from dvlad.fed.leases import Leases
from dvlad.gpu.budgets import Budgets, BudgetUnknown, memory_ask
from dvlad.gpu.inventory import Inventory
from dvlad.gpu.links import link_score
from dvlad.runtime.supervisor import Supervisor
from dvlad.sched import Capacity, Cluster, Limits, Plan, QueuedJob, Usage, plan
from dvlad.sched.memory_fit import MemoryAsk, SharedGpus
from dvlad.server.auth import Identity
from dvlad.server.gpu_jobs import MemoryPlan
from dvlad.server.looplag import LoopLag
from dvlad.store import ACTIVE, IllegalTransition, Job, Queued, State, Store, Submission

log = logging.getLogger("dvlad")
PASS_INTERVAL_S = 0.2
SAFETY_NET_S = 30.0


class NeverFits(Exception):
    """A job that asks for more than this whole node has: queued, it would wait forever."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(reason)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _decide(queue: list[Queued], asks: dict[int, MemoryAsk | None], cluster: Cluster, limits: Limits) -> Plan:
    """One pass's decisions from a snapshot of the queue, what each queued job asks of a shared GPU,
    and the cluster (run in a worker thread)."""
    return plan([QueuedJob(*q, asks[q.id]) for q in queue], cluster, limits)


class Daemon:
    """One machine's queue: the store, the inventory, the supervisor, and the scheduling loop."""

    def __init__(self, config: Config, store: Store, inventory: Inventory, state_dir: Path):
        self.config, self.store, self.inventory = config, store, inventory
        self._link_score = link_score(inventory.topology)  # the topology is read once, at start
        self.supervisor = Supervisor(store, state_dir, config.daemon.cancel_grace_s, self.kick, inventory.topology,
                                     config.node.share_base_group)
        self._wake = asyncio.Event()
        self._pending: list[tuple[Submission, asyncio.Future[tuple[Job, bool]]]] = []
        self.waiting: dict[int, str] = {}
        """Each queued job's pending reason from the last scheduling pass (kept in memory: it changes
        with every pass, and the first pass after a restart gives it again)."""
        self.last_pass: tuple[int, float] = (0, 0.0)
        """The last scheduling pass: queued jobs it considered, seconds it took (``/metrics``)."""
        self.loop_lag = LoopLag()
        self._gpu_memory = {d["index"]: d.get("memory_total") for d in inventory.topology.get("devices", [])}
        self._asks: dict[int, MemoryAsk | None] = {}
        """Job id -> what it asks of each GPU when it shares GPUs (None: whole GPUs), from its spec."""
        self.leases = Leases()
        """GPUs and CPU slots of this node that peers' multi-node jobs hold (:mod:`dvlad.fed.leases`)."""
        self.federation: Any = None
        """The :class:`dvlad.fed.service.Federation` when ``[federation]`` is on: it starts multi-node jobs."""
        self._plans: dict[int, MemoryPlan] = {}

    def kick(self) -> None:
        """Ask for a scheduling pass soon (after a submit, a cancel or an exit)."""
        self._wake.set()

    async def submit(self, who: Identity, spec: dict[str, Any], idempotency_key: str | None,
                     priority: int) -> tuple[Job, bool]:
        """Check as ``dvla validate`` does (:func:`dvla.admission.admit`: SpecError propagates; also for
        a path still relative, which the job would look up in its run directory), refuse a job bigger than the node
        (NeverFits), then record durably.

        Submits that arrive while a commit is on its way to disk wait for the next one and share
        its fsync (group commit); each reply still comes only after its own job is on disk."""
        resolved, _ = admit(spec)  # as dvla validate, dvla submit and the SDK checked it
        gpus, cpus = resolved.resources.gpus, job_cpu_slots(resolved.env.workers)
        self._refuse_if_never_fits(gpus, cpus)
        self._refuse_if_memory_never_fits(resolved)
        self._refuse_if_too_few_nodes(resolved.placement.nodes)
        future: asyncio.Future[tuple[Job, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((Submission(
            uid=who.uid, gid=who.gid, user=who.user, groups=list(who.groups), idempotency_key=idempotency_key,
            name=resolved.job.name, priority=priority, gpus=gpus, cpus=cpus, spec=spec_to_dict(resolved)), future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._commit_pending)
        return await future

    def capacity(self) -> Capacity:
        """The whole node, busy or not: every GPU of the inventory and every CPU slot."""
        return Capacity(len(self.inventory.gpu_indices), self.config.cpu_slots)

    def _refuse_if_never_fits(self, gpus: int, cpus: int) -> None:
        """Raise :class:`NeverFits` for a job bigger than the node, saying what to change: the job's
        key or the daemon's setting. Why at submit: the scheduler would keep it queued for ever, and
        its user would wait without learning why."""
        node = self.capacity()
        if node.holds(gpus, cpus):
            return
        fixes = []
        if gpus > node.gpus:
            fixes.append(f"lower resources.gpus to {node.gpus}" + (" (the job then runs on the CPU)" if not node.gpus
                                                                   else " or fewer") + " or use a node with more GPUs")
        if cpus > node.cpus:
            fixes.append(f"lower env.workers to {node.cpus} or fewer (keeping num_envs divisible by groups × workers), "
                         "or raise node.cpu_slots or node.cpu_oversubscribe in dvlad's config")
        field = "spec.resources.gpus" if gpus > node.gpus else "spec.env.workers"
        raise NeverFits(field, f"this node has {_count(node.gpus, 'GPU')} and {_count(node.cpus, 'CPU slot')} "
                               f"({self.config.cpu_slots_origin}); the job asks for {_count(gpus, 'GPU')} and "
                               f"{_count(cpus, 'CPU slot')} (one per env worker): {'; '.join(fixes)}")

    def _refuse_if_memory_never_fits(self, spec: JobSpec) -> None:
        """Raise :class:`NeverFits` for a job that shares GPUs and asks more of each than this node's
        GPUs have, or leaves a budget at "auto" that dvlad cannot estimate, with the figures."""
        try:
            ask = memory_ask(spec)
        except BudgetUnknown as exc:
            raise NeverFits(f"spec.{exc.key}", str(exc)) from None
        why = ask and SharedGpus(self._gpu_memory).never_fits(spec.resources.gpus, ask)
        if why:
            raise NeverFits("spec.resources.activation_pool",
                            f"this node's GPUs cannot hold the job: it {why}; lower resources.activation_pool "
                            "or resources.weight_pool (or the batch sizes behind an \"auto\" budget), or use a "
                            "node with larger GPUs")

    def _refuse_if_too_few_nodes(self, nodes: int) -> None:
        """Raise :class:`NeverFits` for a multi-node job this daemon cannot coordinate: no federation,
        or fewer peers configured than the job needs besides this node."""
        if nodes == 1:
            return
        peers = len(self.config.federation.peers) if self.federation is not None else 0
        if nodes - 1 > peers:
            where = (f"this dvlad has {_count(peers, 'peer')} in [federation] peers" if self.federation is not None
                     else "this dvlad is not federated (no [federation] secret_file in its config)")
            raise NeverFits("spec.placement.nodes", f"the job asks for {nodes} nodes; {where}; see docs/federation.md")

    def _ask(self, job_id: int, job: Job | None = None) -> MemoryAsk | None:
        """What job ``job_id`` asks of each GPU (None: whole GPUs), computed once from its spec; a
        shared base whose key is not known yet (its directory is being read) counts whole, and is
        asked again at the next pass."""
        if job_id not in self._asks:
            job = job or self.store.get(job_id)
            try:
                spec = spec_from_dict(job.spec) if job else None
                ask = memory_ask(spec) if spec else None
            except (BudgetUnknown, SpecError):  # refused at submit; a record from before: whole GPUs
                ask = spec = None
            if ask and spec.resources.share_base:  # its base counts once per GPU among those sharing it
                base = self.supervisor.bases.admission_key(job, spec)
                if base is None:
                    return ask
                ask = dataclasses.replace(ask, base_key=base)
            self._asks[job_id] = ask
        return self._asks[job_id]

    def memory_plan(self, job: Job) -> MemoryPlan:
        """The budgets and estimate of a job's pools (``/v1/gpus``, ``/metrics``), once from its spec."""
        if job.id not in self._plans:
            try:
                self._plans[job.id] = MemoryPlan.of(spec_from_dict(job.spec))
            except (BudgetUnknown, SpecError, ValueError):  # a record from before: nothing promised
                self._plans[job.id] = MemoryPlan(Budgets(), None)
        return self._plans[job.id]

    def _commit_pending(self) -> None:
        batch, self._pending = self._pending, []
        try:
            results = self.store.submit(*(sub for sub, _ in batch))
        except Exception as exc:  # the whole transaction rolled back: nobody's job was recorded
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), (job, created) in zip(batch, results, strict=True):
            if created:
                log.info("submitted", extra={"job": job.id, "user": job.user, "job_name": job.name})
            if not future.done():  # a client that hung up cancelled its wait; its job stays recorded
                future.set_result((job, created))
        self.kick()

    def cancel(self, job: Job, who: Identity) -> Job:
        job = self.supervisor.cancel(job, who.user)
        log.info("cancel", extra={"job": job.id, "by": who.user, "state": job.state.value})
        self.kick()
        return job

    def cluster(self) -> tuple[Cluster, list[Job]]:
        """Free GPUs and CPU slots, and per-user/group usage, from the active jobs; the GPUs' links
        from the topology, so that placement prefers the best-linked set."""
        active = self.store.list(states=ACTIVE, limit=1 << 30)
        users: dict[str, Usage] = defaultdict(Usage)
        groups: dict[str, Usage] = defaultdict(Usage)
        busy: set[int] = set()
        shared = SharedGpus(self._gpu_memory)
        cpus = 0
        for job in active:
            if ask := self._ask(job.id, job):
                shared.take(job.gpu_ids, ask)
            busy.update(job.gpu_ids)
            cpus += job.cpus
            for usage in [users[job.user], *(groups[g] for g in job.groups)]:
                usage.gpus += job.gpus
                usage.running_jobs += 1
        leased_gpus, leased_cpus = self.leases.reserved({job.id for job in active})
        busy.update(leased_gpus)
        cpus += leased_cpus
        free = frozenset(set(self.inventory.gpu_indices) - busy)
        return Cluster(free, self.config.cpu_slots - cpus, dict(users), dict(groups), link_score=self._link_score,
                       capacity=self.capacity(), shared=shared), active

    def node(self, host_reading: dict[str, Any]) -> dict[str, Any]:
        """This node as ``GET /v1/nodes`` lists it: GPUs (free or not), CPU slots, running jobs, and
        ``host_reading`` (the machine's CPU and RAM)."""
        cluster, active = self.cluster()
        return {
            "name": self.inventory.topology.get("host", ""),
            "gpu_source": self.inventory.source,
            "gpus": [{"index": d["index"], "name": d.get("name", ""), "memory_total": d.get("memory_total", 0),
                      "free": d["index"] in cluster.free_gpus} for d in self.inventory.topology.get("devices", [])],
            "cpu_slots": self.config.cpu_slots,
            "free_cpu_slots": cluster.free_cpus,
            "running_jobs": len(active),
            **host_reading,
        }

    def public(self, job: Job) -> dict[str, Any]:
        """A job's record as the API shows it: the store's, with a queued job's pending reason (why
        it waits, as ``squeue`` shows it) from the last scheduling pass; None for a job no pass has
        seen yet (it was submitted within the last second) and for one that left the queue."""
        record = job.public()
        record["pending_reason"] = self.waiting.get(job.id) if job.state is State.QUEUED else None
        return record

    async def schedule_pass(self) -> None:
        """Decide in a worker thread, then carry the decisions out here, on the event loop.

        Why a thread: deciding reads every queued job (10,000 of them took ~100 ms); on the event
        loop that would hold every client for as long. The thread decides on a snapshot taken at one
        instant (the store's queue, the cluster from the active jobs), which stays valid while it
        runs: only passes start jobs, and they run one at a time; a job that ends meanwhile frees room
        for the next pass (its exit kicks one). A queued job cancelled meanwhile is skipped."""
        queue = self.store.queue()
        asks = {q.id: self._ask(q.id) for q in queue}  # once per job, cached: a new one reads its spec
        if not queue:
            self.waiting = {}
            return
        cluster, active = self.cluster()
        live = {*asks, *(job.id for job in active)}
        self._asks = {job_id: ask for job_id, ask in self._asks.items() if job_id in live}  # ended jobs: forgotten
        self._plans = {job_id: plan for job_id, plan in self._plans.items() if job_id in live}
        self.supervisor.bases.forget_reads(live)
        began = time.perf_counter()
        decided = await asyncio.to_thread(_decide, queue, asks, cluster, self.config.limits)
        self.last_pass = (len(queue), time.perf_counter() - began)
        self.waiting = decided.waiting
        for decision in decided.starts:
            gpu_ids = list(decision.gpu_ids)
            try:
                job = self.store.transition(decision.job_id, State.PLACING, "resources free; starting",
                                            gpu_ids=gpu_ids)
            except IllegalTransition:  # cancelled while the pass decided: its room stays free
                continue
            if self.federation is not None and self.federation.multi_node(job):
                self.federation.coordinate(job, gpu_ids)  # places the other parts, then starts this one
                continue
            job = self.supervisor.start(job, gpu_ids)
            if job.state is State.FAILED:  # it could not start: its room is free again for the next pass
                self.kick()
            log.info("placed", extra={"job": job.id, "gpus": gpu_ids, "state": job.state.value, "pid": job.pid})

    async def run(self) -> None:
        """Recover, then schedule whenever kicked (and every ``SAFETY_NET_S``, as a safety net);
        raise if the supervisor stops.

        A pass runs only when something that can change its outcome happened: a job arrived, or room
        was freed (an exit, a cancel), each of which kicks. Passes are at least ``PASS_INTERVAL_S``
        apart: a pass reads the whole queue, and a burst of submits must not turn into one pass each.
        Why raise: a daemon whose supervisor died would never see a job end nor free its GPUs
        (its end kicks, so the loop notices at once); ending ``run`` makes dvlad exit non-zero, and systemd
        restarts it (``Restart=on-failure``), re-adopting the running jobs."""
        self.supervisor.recover()
        supervise = asyncio.create_task(self.supervisor.run())
        supervise.add_done_callback(lambda _: self.kick())
        watch_lag = asyncio.create_task(self.loop_lag.run())
        try:
            while True:
                if supervise.done():
                    raise RuntimeError("the job supervisor stopped") from supervise.exception()
                self._wake.clear()
                await self.schedule_pass()
                await asyncio.sleep(PASS_INTERVAL_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), SAFETY_NET_S)
        finally:
            supervise.cancel()
            watch_lag.cancel()
