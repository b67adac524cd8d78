"""A job's lanes on its devices, wired together and run until the job's budget is spent.

The job's devices (its GPUs, or ``placement.cpu_devices`` CPU devices, or the one CPU) split by the
layout (:mod:`dvlad.gpu.layout`, docs/planes.md) into learner ranks and actor replicas:

- **replicas** (infer lane): replica 0 is this process's main thread; the others are processes of
  their own (:mod:`dvlad.lanes.replica`). Each drives its own env workers (sample lane) through
  shared-memory slots and fills segments into the trajectory queue of the learner rank each of its
  env groups feeds;
- **learner ranks** (learn lane): rank 0 is a process of its own (or with ``pipeline.learner =
  "thread"`` on a one-device job a thread of this process, so that inference can take priority on
  the GPU: ``Placement.lane_stream``); the others are processes joined by torch.distributed;
- **distribute lane**: a thread beside the learner rank that owns a part of the replication plan,
  copying each version into the replicas' staging buffers (the weight plane).

Everything else is small messages (:mod:`dvlad.lanes.messages`) to this process's reporter. On a
GPU an actor and a learner on one device share it: inference in bf16, learning under bf16 autocast
on fp32 master weights (see ``device.py``).

``mode = "sync"`` builds exactly the same parts and only changes two knobs: one env group in flight
at a time and ``max_staleness = 0``, so the lanes run strictly in turn.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import torch

from dvla import metric_names as m
from dvla import stops
from dvla.spec import JobSpec
from dvlad.exits import how_it_ended
from dvlad.gpu.layout import JobLayout, cpus_near, plan_layout
from dvlad.gpu.pools import DualPool, PoolOverflow
from dvlad.lanes.actor import Actor
from dvlad.lanes.budget import Budget, Carried, carried_for
from dvlad.lanes.child import start_lane
from dvlad.lanes.device import ACTOR_PRIORITY, JobDevices, job_devices, placement_for
from dvlad.lanes.env_workers import EnvWorkerPool
from dvlad.lanes.learner import LearnerConfig, learner_main
from dvlad.lanes.messages import LearnerFailed, LearnerReady
from dvlad.lanes.node_part import NodePart, NodeState
from dvlad.lanes.replica import ReplicaSetup, check_segments, knobs, make_actor, open_pool, replica_main
from dvlad.lanes.reporter import Progress, Reporter
from dvlad.lanes.timeline import LaneTimeline
from dvlad.lanes.trajectory import SegmentShape, TrajectoryQueue
from dvlad.lanes.vram import GROWTH_UPDATES, activation_growth, running_peaks, tensor_bytes
from dvlad.lanes.weights import Route, WeightPlane
from dvlad.policies import build_policy
from dvlad.ports import free_port
from dvlad.sharing import base as shared

Lane = threading.Thread | mp.process.BaseProcess
SETUP_POLL_S = 0.2
"""How often waiting for the learner ranks looks for a lane that died or a stop asked for."""


class JobFailed(RuntimeError):
    """A lane died; the message says which and why."""


class StoppedInSetup(Exception):
    """A stop was asked for (SIGTERM, Ctrl-C) while the job was still setting up: set-up ends at its
    next step, before any lane ran, so nothing was trained and nothing is written (the learner, if it
    got that far, saves no checkpoint). Why not finish set-up first, as a ``train.max_minutes`` spent
    in set-up does: building LIBERO's envs or a large model can outlast dvlad's grace period, and a
    cancel then ends in a SIGKILL."""


class Pipeline:
    def __init__(self, spec: JobSpec, output_dir: Path, on_progress: Callable[[Progress], None] | None = None,
                 on_log: Callable[[str], None] | None = None, started_at: float | None = None,
                 part: NodePart | None = None) -> None:
        self.part = part
        """This node's part of a job of several nodes (``node_part.py``); None: the whole job is here."""
        self.spec, self.output_dir = (part.own(spec) if part else spec), output_dir
        self.on_progress = on_progress or (lambda p: None)
        self.on_log = on_log or (lambda line: None)
        self.timeline = LaneTimeline()
        self.layout: JobLayout | None = None
        self.pool: EnvWorkerPool | None = None
        """Replica 0's env workers."""
        self.actor: Actor | None = None
        """Replica 0, the actor in this process."""
        self.checkpoint: str | None = None
        """The latest complete checkpoint, once the job has run."""
        self.lanes: dict[str, Lane] = {}
        """The learner ranks and the replicas in processes of their own, by the name failures use."""
        self.timeline_origin = 0.0
        """``time.monotonic()`` at which the rows' ``time_s`` starts (to align them with the timeline)."""
        self.sampling_ended_s: float | None = None
        """The rows' ``time_s`` at which this node's actors stopped sampling: later rows are the
        learner's last updates, on rollouts still queued (what a throughput window must leave out)."""
        self.pools: DualPool | None = None
        """This process's weight and activation pools, with the job's budgets (dvlad/gpu/pools.py)."""
        self.pool_peaks: dict[str, float] = {}
        """The largest weight and activation pools the rows reported (the summary's measured peaks)."""
        self.activation_history: deque[float] = deque(maxlen=GROWTH_UPDATES + 1)
        self.budget = Budget(spec.train, time.monotonic() if started_at is None else started_at)
        """What stops the job (``started_at``: the job's start, so ``train.max_minutes`` counts set-up)."""
        self.reporter: Reporter | None = None
        """The job's reporter, once it runs (the env steps of this node and of the others)."""
        self.node: NodeState | None = None
        """What this process tells its learner ranks for their agreement before each update."""

    def request_stop(self, reason: str = stops.SIGTERM) -> None:
        """Finish the update in hand, checkpoint and stop (SIGTERM and Ctrl-C do this)."""
        self.budget.stop(reason)

    @property
    def stop_requested(self) -> bool:
        return self.budget.asked

    @property
    def stop_reason(self) -> str | None:
        """Which limit stopped the job, or the stop asked for (:mod:`dvla.stops`)."""
        return self.budget.reason

    def plan(self) -> tuple[JobDevices, JobLayout]:
        """The job's devices and its layout over them (what ``scripts/plan_job.py`` prints)."""
        spec = self.spec
        devices = job_devices(spec, placement_for(spec))
        layout = plan_layout(devices.ids, devices.topology, layout=spec.placement.layout,
                             learners=spec.placement.learner_gpus, workers=spec.env.workers, groups=spec.env.groups,
                             cores=len(os.sched_getaffinity(0)), fanout=spec.placement.replication_fanout)
        return devices, layout

    def _watch_pools(self, p: Progress) -> None:
        """Keep each pool's peak for the summary, flag an activation pool that keeps growing
        (:func:`~dvlad.lanes.vram.activation_growth`) and fail a job whose activations passed their cap
        (the job's whole activation pool, actor and learner together, as the row reports it); then
        the row goes on to ``on_progress``."""
        p.values.update(running_peaks(self.pool_peaks, p.values))
        if m.GPU_ACTIVATION_BYTES in p.values:
            self.activation_history.append(p.values[m.GPU_ACTIVATION_BYTES])
            p.values.update(activation_growth(self.activation_history))
        cap = self.pools.budgets.activation if self.pools else None
        if cap is not None and p.values.get(m.GPU_ACTIVATION_BYTES, 0) > cap:
            raise PoolOverflow("activation", cap, int(p.values[m.GPU_ACTIVATION_BYTES]), "resources.activation_pool")
        self.on_progress(p)

    def run(self) -> dict[str, float]:
        spec, ctx = self.spec, mp.get_context("spawn")
        torch.set_num_threads(spec.resources.torch_threads)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        devices, layout = self.plan()
        self.layout = layout
        ranks, replicas = len(layout.learner_devices), len(layout.actor_devices)
        if spec.pipeline.learner == "thread" and (ranks > 1 or replicas > 1):
            raise ValueError('pipeline.learner = "thread" runs the learner beside a one-device job\'s actor; '
                             f"this job has {ranks} learner rank(s) and {replicas} actor replica(s)")
        if ranks > 1 or replicas > 1:
            self.on_log(f"layout: {layout.layout}, learner ranks on {list(layout.learner_devices)}, actor replicas "
                        f"on {list(layout.actor_devices)}; {layout.replication.describe()}")
        setups = _replica_setups(spec, devices, layout)
        pool = self.pool = open_pool(spec, setups[0])
        parts: list = [pool]
        lanes = self.lanes = {}
        stop = ctx.Event()
        try:
            self._unless_stopped()
            check_segments(spec, pool.spec)
            placement = setups[0].placement
            pools = self.pools = DualPool.for_job(spec, placement.device)
            with pools.weights():  # the replica and the staging buffers live to the end
                policy, flat = build_policy(spec, pool.spec, placement.device, placement.actor_dtype)
            self._unless_stopped()
            if spec.resources.share_base and (base := shared.from_environment()) is not None:
                self.on_log(f"shared base: mapped {base.manifest['bytes'] / 2**20:.1f} MiB on "
                            f"{base.manifest['device']} from its holder (SHA-256 {base.sha256[:16]}…)")
            shape = SegmentShape(spec.pipeline.segment_steps, pool.envs_per_group, spec.policy.action_chunk,
                                 policy.max_instruction_tokens)
            _, max_staleness = knobs(spec)
            feeds = Counter(q for s in setups for q in s.queue_of_group)  # segments per rollout, per rank
            queues = [TrajectoryQueue.create(ctx, pool.spec, shape,
                                             spec.pipeline.queue_segments or feeds[k] * (max_staleness + 1))
                      for k in range(ranks)]
            with pools.weights():
                plane = WeightPlane.create(ctx, flat.numel(), [s.placement.device for s in setups],
                                           dtype=placement.actor_dtype)
            pools.seal(tensor_bytes(shared.private([*policy.parameters(), *policy.buffers()])))
            parts += [*queues, plane]
            messages = ctx.Queue()
            part = self.part or NodePart.alone(ranks, f"tcp://127.0.0.1:{free_port()}" if ranks > 1 else "")
            part.check(ranks)
            node = self.node = NodeState(ctx)
            learner_devices = [devices.device_of(d) for d in layout.learner_devices]
            # every node decides alike: the coordinator gives a job's nodes the same kind of devices
            backend = "nccl" if all(d.type == "cuda" for d in learner_devices) and \
                len(set(learner_devices)) == ranks else "gloo"
            for rank, device_id in enumerate(layout.learner_devices):
                cfg = LearnerConfig(spec, pool.spec, str(self.output_dir),
                                    placement_for(spec, devices.device_of(device_id)), rollout_segments=feeds[rank],
                                    rank=rank, part=part if part.world > 1 else None, backend=backend,
                                    routes=_routes(layout, rank) if ranks > 1 or replicas > 1 else None)
                lane = threading.Thread if cfg.placement.learner_thread else ctx.Process
                lanes[_learner_name(rank, ranks)] = lane(
                    target=learner_main, args=(cfg, queues[rank].handle, plane.handle, messages, stop, node),
                    name=f"dvla-learner-{rank}", daemon=True)
                start_lane(lanes[_learner_name(rank, ranks)])
            ready, early = self._await_ready(messages, lanes, ranks)
            for setup in setups[1:]:
                lanes[f"actor replica {setup.replica}"] = ctx.Process(  # not a daemon: it starts env workers
                    target=replica_main, name=f"dvla-replica-{setup.replica}",
                    args=(spec, setup, [q.handle for q in queues], plane.handle, ready.version, messages, stop))
                start_lane(lanes[f"actor replica {setup.replica}"])
            actor = self.actor = make_actor(spec, setups[0], pool, queues, plane, self.timeline, ready.version,
                                            built=(policy, flat))
            actor.env_steps = ready.trained_env_steps
            carried = carried_for(self.output_dir, ready.version) if spec.train.resume else None
            if carried is not None:  # the episode window and env steps of the checkpoint it resumed
                carried.restore(actor, self.budget)
            return self._run_actor(actor, lanes, stop, lambda t_start: Reporter(
                self.timeline, actor, pool, messages, t_start, spec.train.log_every, self._watch_pools,
                queues=queues, replicas=replicas, workers=spec.env.workers, learner_ranks=ranks), early)
        except torch.OutOfMemoryError as exc:  # the hard cap: say which pool, not only "out of memory"
            raise ((self.pools and self.pools.overflow_from_oom()) or exc) from exc
        finally:
            stop.set()
            for lane in lanes.values():
                lane.join(timeout=30)
                if lane.is_alive() and isinstance(lane, mp.process.BaseProcess):
                    lane.kill()  # a thread cannot be killed: it stops at the stop event
            for part in reversed(parts):
                part.close()

    def _unless_stopped(self) -> None:
        """Raise :class:`StoppedInSetup` if a stop was asked for: a step of set-up is done."""
        if self.budget.asked:
            raise StoppedInSetup(self.budget.reason)

    def _await_ready(self, messages, lanes: dict[str, Lane], ranks: int) -> tuple[LearnerReady, list[object]]:
        """Rank 0's :class:`LearnerReady` once every rank is ready, and the messages sent before (the
        first publication), which the reporter handles first."""
        early: list[object] = []
        ready: dict[int, LearnerReady] = {}
        while len(ready) < ranks:
            self._unless_stopped()
            try:
                msg = messages.get(timeout=SETUP_POLL_S)
            except queue.Empty:
                for name, lane in lanes.items():
                    if not lane.is_alive():
                        raise JobFailed(f"{_exited(name, lane)} before it was ready") from None
                continue
            if isinstance(msg, LearnerFailed):
                raise JobFailed(f"learner{f' rank {msg.rank}' if ranks > 1 else ''} failed to start:\n{msg.traceback}")
            if isinstance(msg, LearnerReady):
                ready[msg.rank] = msg
            else:
                early.append(msg)
        return ready[0], early

    def _run_actor(self, actor: Actor, lanes: dict[str, Lane], stop, reporter_from: Callable[[float], Reporter],
                   early: list[object]) -> dict[str, float]:
        t_start = self.timeline_origin = time.monotonic()
        budget = self.budget
        reporter = self.reporter = reporter_from(t_start)
        node = self.node
        assert node is not None
        reporter.on_row = budget.see_row
        reporter.on_checkpoint = lambda version: self._carry(reporter, version)
        for msg in early:
            reporter.handle(msg)
        reporter.start()

        def ended() -> str | None:
            return next((_exited(name, lane) for name, lane in lanes.items() if not lane.is_alive()), None)

        def should_stop() -> bool:
            node.tell(reporter.node_env_steps)
            if reporter.other_nodes.stop_reason is not None:  # another node stopped: all do, for its reason
                budget.stop(reporter.other_nodes.stop_reason)
            return ended() is not None or reporter.failure is not None or budget.check(reporter.env_steps) is not None

        try:
            with actor.placement.lane_stream(ACTOR_PRIORITY):
                actor.run(should_stop)
        finally:
            self.sampling_ended_s = time.monotonic() - t_start
            lane_ended = ended()  # before any was asked to stop
            # the ranks learn why this node stops (or that it fails) before it asks them to
            node.tell(reporter.node_env_steps, budget.reason,
                      failed=budget.reason is None or lane_ended is not None or reporter.failure is not None)
            stop.set()
            for lane in lanes.values():
                lane.join(timeout=120 if lane_ended is None else 10)
            reporter.finish()
            self.checkpoint = reporter.checkpoint
        failure = reporter.failure or lane_ended
        if failure:
            raise JobFailed(failure)
        return {**reporter.last, m.ENV_STEPS: float(reporter.env_steps)}  # the last row's, and all the steps


    def _carry(self, reporter: Reporter, version: int) -> None:
        """Beside the checkpoint of ``version``: what a resume of it carries over (``budget.py``)."""
        with contextlib.suppress(OSError):  # a full disk costs the resume its window, not the job
            Carried.of(reporter.env_steps, reporter.actor.episodes, self.budget, version).save(self.output_dir)


def _replica_setups(spec: JobSpec, devices: JobDevices, layout: JobLayout) -> list[ReplicaSetup]:
    """Each replica's device, share of the envs and workers, and the learner rank each of its env
    groups feeds: group ``g`` of replica ``a`` goes to rank ``(a · groups + g) mod ranks``."""
    replicas, ranks, groups = len(layout.actor_devices), len(layout.learner_devices), spec.env.groups
    envs, workers = spec.env.num_envs // replicas, spec.env.workers // replicas
    return [ReplicaSetup(a, placement_for(spec, devices.device_of(device_id)), a * envs, envs, workers,
                         tuple((a * groups + g) % ranks for g in range(groups)),
                         cpus_near(devices.topology, device_id) if replicas > 1 else ())
            for a, device_id in enumerate(layout.actor_devices)]


def _routes(layout: JobLayout, rank: int) -> tuple[Route, ...]:
    """Learner rank ``rank``'s part of the replication plan, in replica numbers: decoupled, rank 0
    makes every copy (from its weights, then replica to replica); colocated, each rank copies its
    weights to the replica on its own device."""
    replica_of = {device: a for a, device in enumerate(layout.actor_devices)}
    own = layout.learner_devices[rank]
    copies = [c for c in layout.replication.copies
              if (c.src == own if layout.layout == "colocated" else rank == 0)]
    return tuple(Route(None if c.src == own else replica_of[c.src], replica_of[c.dst]) for c in copies)


def _learner_name(rank: int, ranks: int) -> str:
    return f"learner rank {rank}" if ranks > 1 else "learner"


def _exited(name: str, lane: Lane) -> str:
    """What to say when a lane ended without being asked to."""
    code = getattr(lane, "exitcode", None)  # the pid lets dvlad look for an OOM kill of it (supervisor.py)
    return f"{name} thread ended" if code is None else f"{name} (pid {lane.pid}) {how_it_ended(code)}"

