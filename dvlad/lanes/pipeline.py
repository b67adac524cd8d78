"""A job's four lanes, wired together and run until the job's budget is spent.

Processes: env workers (sample lane), this process's main thread (infer lane), the learn
lane with its distribute thread (a process of its own, or with ``pipeline.learner =
"thread"`` a thread of this process, so that inference can take priority on the GPU:
``Placement.lane_stream``). Between them: env slots and the
trajectory queue (data plane, host shared memory) and the weight plane (versions; staging
in host shared memory, or on the GPU beside the actor when the job runs there). Everything
else is small messages. On a GPU the actor and the learner share the device: inference in
bf16, learning under bf16 autocast on fp32 master weights (see ``device.py``).

``mode = "sync"`` builds exactly the same parts and only changes two knobs: one env
group in flight at a time and ``max_staleness = 0``, so the lanes run strictly in turn.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dvla.spec import JobSpec
from dvlad.lanes.actor import Actor, ActorConfig
from dvlad.lanes.device import ACTOR_PRIORITY, placement_for
from dvlad.lanes.env_workers import EnvWorkerPool
from dvlad.lanes.learner import LearnerConfig, learner_main
from dvlad.lanes.messages import LearnerFailed, LearnerReady
from dvlad.lanes.reporter import Progress, Reporter
from dvlad.lanes.timeline import LaneTimeline
from dvlad.lanes.trajectory import SegmentShape, TrajectoryQueue
from dvlad.lanes.weights import WeightPlane
from dvlad.policies import build_policy
from dvlad.rl import ALGORITHMS


class JobFailed(RuntimeError):
    """A lane died; the message says which and why."""


def effective_knobs(spec: JobSpec) -> tuple[bool, int]:
    """(pipelined, max_staleness) for the job's mode: sync is async with both turned off."""
    if spec.job.mode == "sync":
        return False, 0
    return True, spec.pipeline.max_staleness


class Pipeline:
    def __init__(self, spec: JobSpec, output_dir: Path,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.spec, self.output_dir = spec, output_dir
        self.on_progress = on_progress or (lambda p: None)
        self.timeline = LaneTimeline()
        self.pool: EnvWorkerPool | None = None
        self.actor: Actor | None = None
        self.checkpoint: str | None = None
        """The latest complete checkpoint, once the job has run."""
        self.timeline_origin = 0.0
        """``time.monotonic()`` at which the rows' ``time_s`` starts (to align them with the timeline)."""
        self._stop_requested = threading.Event()

    def request_stop(self) -> None:
        """Finish the update in hand, checkpoint and stop (SIGTERM does this)."""
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def run(self) -> dict[str, float]:
        spec, ctx = self.spec, mp.get_context("spawn")
        placement = placement_for(spec)
        pipelined, max_staleness = effective_knobs(spec)
        torch.set_num_threads(spec.resources.torch_threads)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        episodic = ALGORITHMS[spec.algo.name].episodic
        pool = EnvWorkerPool(spec.env.name, self._env_args(), num_envs=spec.env.num_envs,
                             groups=spec.env.groups, workers=spec.env.workers,
                             action_chunk=spec.policy.action_chunk, auto_reset=not episodic,
                             seed=spec.job.seed, step_timeout_s=spec.env.step_timeout_s,
                             envs_per_index=spec.algo.group_size if episodic else 1)
        self.pool = pool
        parts: list = [pool]
        learner = None
        try:
            if episodic and spec.pipeline.segment_steps < pool.spec.max_episode_steps:
                raise ValueError(f"GRPO needs whole episodes: pipeline.segment_steps={spec.pipeline.segment_steps}"
                                 f" < the env's episode limit {pool.spec.max_episode_steps}")
            policy, flat = build_policy(spec, pool.spec, placement.device, placement.actor_dtype)
            capacity = spec.pipeline.queue_segments or spec.env.groups * (max_staleness + 1)
            shape = SegmentShape(spec.pipeline.segment_steps, pool.envs_per_group, spec.policy.action_chunk,
                                 policy.max_instruction_tokens)
            traj = TrajectoryQueue.create(ctx, pool.spec, shape, capacity)
            plane = WeightPlane.create(ctx, flat.numel(), [placement.device], dtype=placement.actor_dtype)
            parts += [traj, plane]
            messages, stop = ctx.Queue(), ctx.Event()
            cfg = LearnerConfig(spec, pool.spec, str(self.output_dir), placement, rollout_segments=pool.groups)
            lane = threading.Thread if placement.learner_thread else ctx.Process
            learner = lane(target=learner_main, args=(cfg, traj.handle, plane.handle, messages, stop),
                           name="dvla-learner", daemon=True)
            learner.start()
            ready, early = self._await_ready(messages, learner)
            actor = Actor(pool, policy, flat, plane, [traj] * pool.groups,
                          ActorConfig(spec.pipeline.segment_steps, max_staleness, pipelined, episodic=episodic,
                                      group_size=spec.algo.group_size, seed=spec.job.seed,
                                      compile=spec.pipeline.compile_actor),
                          self.timeline, start_rollout=ready.version, placement=placement)
            actor.env_steps = ready.trained_env_steps
            self.actor = actor
            return self._run_actor(actor, pool, learner, messages, stop, early)
        finally:
            if learner is not None and learner.is_alive():
                learner.join(timeout=30)
                if learner.is_alive() and isinstance(learner, mp.process.BaseProcess):
                    learner.kill()  # a thread cannot be killed: it stops at the stop event
            for part in reversed(parts):
                part.close()

    def _env_args(self) -> dict:
        args = dict(self.spec.env.args)
        if self.spec.env.max_episode_steps:
            args["max_episode_steps"] = self.spec.env.max_episode_steps
        return args

    @staticmethod
    def _await_ready(messages, learner) -> tuple[LearnerReady, list[object]]:
        """The learner's :class:`LearnerReady`, and the messages it sent before it (its first
        publication), which the reporter handles first."""
        early: list[object] = []
        while True:
            try:
                msg = messages.get(timeout=1.0)
            except queue.Empty:
                if not learner.is_alive():
                    raise JobFailed(f"{_exited(learner)} before it was ready") from None
                continue
            if isinstance(msg, LearnerFailed):
                raise JobFailed(f"learner failed to start:\n{msg.traceback}")
            if isinstance(msg, LearnerReady):
                return msg, early
            early.append(msg)

    def _run_actor(self, actor: Actor, pool: EnvWorkerPool, learner, messages, stop,
                   early: list[object]) -> dict[str, float]:
        spec = self.spec
        t_start = self.timeline_origin = time.monotonic()
        deadline = t_start + spec.train.max_minutes * 60 if spec.train.max_minutes else float("inf")
        reporter = Reporter(self.timeline, actor, pool, messages, t_start, spec.train.log_every, self.on_progress)
        for msg in early:
            reporter.handle(msg)
        reporter.start()

        def should_stop() -> bool:
            return (not learner.is_alive() or reporter.failure is not None or self._stop_requested.is_set()
                    or actor.env_steps >= spec.train.total_env_steps or time.monotonic() >= deadline)

        try:
            with actor.placement.lane_stream(ACTOR_PRIORITY):
                actor.run(should_stop)
        finally:
            learner_ended = not learner.is_alive()  # before it was asked to stop
            stop.set()
            learner.join(timeout=120)
            reporter.finish()
            self.checkpoint = reporter.checkpoint
        failure = reporter.failure or (_exited(learner) if learner_ended else None)
        if failure:
            raise JobFailed(failure)
        return reporter.last


def _exited(learner: threading.Thread | mp.process.BaseProcess) -> str:
    """What to say when the learn lane ended without being asked to."""
    code = getattr(learner, "exitcode", None)
    return "learner thread ended" if code is None else f"learner exited with code {code}"
