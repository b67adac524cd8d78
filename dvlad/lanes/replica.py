"""Actor replicas: each one a pool of env workers and an actor on one device of the job.

Replica 0 runs in the job's main process (a one-device job is exactly the single actor it always
was); every other replica runs :func:`replica_main` in a process of its own, with its own env
workers pinned near its GPU, its own staleness gate and its own staging in the weight plane. A
replica reports to the main process by small messages (:class:`~dvlad.lanes.messages.ReplicaProgress`):
its env steps, the episodes that ended, its lane intervals.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass

import torch

from dvla.spec import JobSpec
from dvlad.lanes.actor import Actor, ActorConfig
from dvlad.lanes.child import become_lane
from dvlad.lanes.device import ACTOR_PRIORITY, Placement
from dvlad.lanes.env_workers import EnvWorkerPool, ReplacementBudget
from dvlad.lanes.episodes import EpisodeStats
from dvlad.lanes.messages import ReplicaFailed, ReplicaProgress
from dvlad.lanes.timeline import LaneRecorder
from dvlad.lanes.trajectory import TrajectoryQueue, TrajectoryQueueHandle
from dvlad.lanes.weights import WeightPlane, WeightPlaneHandle
from dvlad.policies import Policy, build_policy
from dvlad.rl import ALGORITHMS
from dvlad.spaces import EnvSpec

REPORT_EVERY_S = 0.25
"""How often a replica process tells the main process what it did."""


@dataclass(frozen=True)
class ReplicaSetup:
    """Where one replica runs and which of the job's envs it steps."""

    replica: int
    placement: Placement
    first_env: int
    """The job-wide number of its first env slot."""
    num_envs: int
    workers: int
    queue_of_group: tuple[int, ...]
    """For each env group, the learner rank whose trajectory queue its segments go to."""
    cpus: tuple[int, ...] = ()
    """Cores its env workers run on (near its GPU); empty: anywhere."""


def knobs(spec: JobSpec) -> tuple[bool, int]:
    """(pipelined, max_staleness) for the job's mode: sync is async with both turned off."""
    if spec.job.mode == "sync":
        return False, 0
    return True, spec.pipeline.max_staleness


def open_pool(spec: JobSpec, setup: ReplicaSetup) -> EnvWorkerPool:
    """The replica's env workers (their build is the slow part of a job's start)."""
    episodic = ALGORITHMS[spec.algo.name].episodic
    args = dict(spec.env.args)
    if spec.env.max_episode_steps:
        args["max_episode_steps"] = spec.env.max_episode_steps
    return EnvWorkerPool(spec.env.name, args, num_envs=setup.num_envs, groups=spec.env.groups,
                         workers=setup.workers, action_chunk=spec.policy.action_chunk, auto_reset=not episodic,
                         seed=spec.job.seed, step_timeout_s=spec.env.step_timeout_s,
                         envs_per_index=spec.algo.group_size if episodic else 1, first_env=setup.first_env,
                         cpus=setup.cpus, nice=spec.env.nice, replacement_budget=ReplacementBudget(
                             spec.env.max_worker_replacements, 60 * spec.env.replacement_window_min))


def check_segments(spec: JobSpec, env: EnvSpec) -> None:
    """An algorithm that learns from whole episodes needs segments that hold one (the env's own
    limit is known only once its workers have built it)."""
    if ALGORITHMS[spec.algo.name].episodic and spec.pipeline.segment_steps < env.max_episode_steps:
        raise ValueError(f"{spec.algo.name.upper()} needs whole episodes: pipeline.segment_steps="
                         f"{spec.pipeline.segment_steps} < the env's episode limit {env.max_episode_steps}")


def make_actor(spec: JobSpec, setup: ReplicaSetup, pool: EnvWorkerPool, queues: list[TrajectoryQueue],
               plane: WeightPlane, timeline: LaneRecorder, start_rollout: int,
               episodes: EpisodeStats | None = None,
               built: tuple[Policy, torch.Tensor] | None = None) -> Actor:
    """The replica's actor: the job's policy built on its device (or ``built`` already), acting into
    its groups' queues."""
    placement = setup.placement
    policy, flat = built or build_policy(spec, pool.spec, placement.device, placement.actor_dtype)
    if setup.replica:
        torch.manual_seed(spec.job.seed + setup.replica)  # each replica samples from a stream of its own
    pipelined, max_staleness = knobs(spec)
    episodic = ALGORITHMS[spec.algo.name].episodic
    cfg = ActorConfig(spec.pipeline.segment_steps, max_staleness, pipelined, episodic=episodic,
                      group_size=spec.algo.group_size, seed=spec.job.seed, compile=spec.pipeline.compile_actor,
                      replica=setup.replica)
    return Actor(pool, policy, flat, plane, [queues[q] for q in setup.queue_of_group], cfg, timeline,
                 start_rollout=start_rollout, placement=placement, episodes=episodes)


class _Outbox:
    """Collects a replica's lane intervals until the next report."""

    def __init__(self) -> None:
        self._intervals: list[tuple[str, float, float, int]] = []
        self._lock = threading.Lock()

    def add(self, lane: str, start: float, end: float, items: int = 0) -> None:
        with self._lock:
            self._intervals.append((lane, start, end, items))

    def take(self) -> list[tuple[str, float, float, int]]:
        with self._lock:
            out, self._intervals = self._intervals, []
        return out


def replica_main(spec: JobSpec, setup: ReplicaSetup, queue_handles: list[TrajectoryQueueHandle],
                 plane_handle: WeightPlaneHandle, start_rollout: int, messages, stop) -> None:
    """Entry point of a replica's process: act until ``stop`` is set, reporting as it goes."""
    become_lane(f"dvla-replica-{setup.replica}")
    torch.set_num_threads(spec.resources.torch_threads)
    if setup.placement.on_gpu:
        torch.cuda.set_device(setup.placement.device)
    queues: list[TrajectoryQueue] = []
    plane = pool = None
    try:
        queues = [TrajectoryQueue.attach(h) for h in queue_handles]
        plane = WeightPlane.attach(plane_handle)
        pool = open_pool(spec, setup)
        check_segments(spec, pool.spec)
        outbox = _Outbox()
        actor = make_actor(spec, setup, pool, queues, plane, outbox, start_rollout,
                           EpisodeStats(keep_new=True))
        done = threading.Event()

        def report() -> None:
            messages.put(ReplicaProgress(setup.replica, actor.env_steps, actor.episodes.take_new(), outbox.take(),
                                         actor.dropped_episodes, pool.replaced_workers, actor.weight_wait_s,
                                         actor.version))

        def reporter() -> None:
            while not done.wait(REPORT_EVERY_S):
                report()

        thread = threading.Thread(target=reporter, name="dvla-replica-report", daemon=True)
        thread.start()
        try:
            with setup.placement.lane_stream(ACTOR_PRIORITY):
                actor.run(stop.is_set)
        finally:
            done.set()
            thread.join(timeout=5)
            report()
    except BaseException:
        messages.put(ReplicaFailed(setup.replica, traceback.format_exc()))
    finally:
        for part in (pool, plane, *queues):
            if part is not None:
                part.close()
