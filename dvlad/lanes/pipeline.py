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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dvla.spec import JobSpec
from dvlad.lanes.actor import Actor, ActorConfig
from dvlad.lanes.device import ACTOR_PRIORITY, placement_for
from dvlad.lanes.env_workers import EnvWorkerPool
from dvlad.lanes.learner import LearnerConfig, learner_main
from dvlad.lanes.timeline import GPU_LANES, LaneTimeline, covered_seconds
from dvlad.lanes.trajectory import SegmentShape, TrajectoryQueue
from dvlad.lanes.vram import LEARNER_PEAK, LEARNER_WEIGHTS, job_pools, peak_allocated, tensor_bytes
from dvlad.lanes.weights import WeightPlane
from dvlad.policies import build_policy


class JobFailed(RuntimeError):
    """A lane died; the message says which and why."""


@dataclass
class Progress:
    """One metrics row: what the job reports after each learner update."""

    values: dict[str, float]
    staleness_hist: list[int] = field(default_factory=list)


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
        self.failure: str | None = None
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
        episodic = spec.algo.name == "grpo"
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
            cfg = LearnerConfig(spec, pool.spec, str(self.output_dir))
            lane = threading.Thread if placement.learner_thread else ctx.Process
            learner = lane(target=learner_main, args=(cfg, traj.handle, plane.handle, messages, stop),
                           name="dvla-learner", daemon=True)
            learner.start()
            start_version, start_steps = self._await_ready(messages, learner)
            actor = Actor(pool, policy, flat, plane, [traj] * pool.groups,
                          ActorConfig(spec.pipeline.segment_steps, max_staleness, pipelined, episodic=episodic,
                                      group_size=spec.algo.group_size, seed=spec.job.seed,
                                      compile=spec.pipeline.compile_actor),
                          self.timeline, start_rollout=start_version, placement=placement)
            actor.env_steps = start_steps
            self.actor = actor
            return self._run_actor(actor, pool, learner, messages, stop)
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
    def _await_ready(messages, learner) -> tuple[int, int]:
        while True:
            try:
                msg = messages.get(timeout=1.0)
            except queue.Empty:
                if not learner.is_alive():
                    raise JobFailed(f"{_exited(learner)} before it was ready") from None
                continue
            if msg[0] == "error":
                raise JobFailed(f"learner failed to start:\n{msg[1]}")
            if msg[0] == "ready":
                return msg[1], msg[2]

    def _run_actor(self, actor: Actor, pool: EnvWorkerPool, learner, messages, stop) -> dict[str, float]:
        spec = self.spec
        t_start = self.timeline_origin = time.monotonic()
        deadline = t_start + spec.train.max_minutes * 60 if spec.train.max_minutes else float("inf")
        reporter = _Reporter(self, actor, pool, messages, t_start)
        reporter.start()

        def should_stop() -> bool:
            if self.failure is None and not learner.is_alive():
                self.failure = _exited(learner)
            return (self.failure is not None or self._stop_requested.is_set()
                    or actor.env_steps >= spec.train.total_env_steps or time.monotonic() >= deadline)

        try:
            with actor.placement.lane_stream(ACTOR_PRIORITY):
                actor.run(should_stop)
        finally:
            stop.set()
            learner.join(timeout=120)
            reporter.finish()
        if self.failure:
            raise JobFailed(self.failure)
        return reporter.last


def _exited(learner: threading.Thread | mp.process.BaseProcess) -> str:
    """What to say when the learn lane ended without being asked to."""
    code = getattr(learner, "exitcode", None)
    return "learner thread ended" if code is None else f"learner exited with code {code}"


class _Reporter(threading.Thread):
    """Drains the learner's messages and turns each update into a metrics row."""

    def __init__(self, pipeline: Pipeline, actor: Actor, pool: EnvWorkerPool, messages, t_start: float) -> None:
        super().__init__(name="dvla-reporter", daemon=True)
        self.p, self.actor, self.pool, self.messages, self.t_start = pipeline, actor, pool, messages, t_start
        self.last: dict[str, float] = {}
        self._done = threading.Event()
        self._window_start = t_start
        self._window_steps = actor.env_steps
        self._window_hist: list[int] = []

    def run(self) -> None:
        while not self._done.is_set():
            self._drain(timeout=0.2)

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=5)
        self._drain(timeout=0.5)  # the final checkpoint message

    def _drain(self, timeout: float) -> None:
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(msg)
            try:
                msg = self.messages.get_nowait()
            except queue.Empty:
                return

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "interval":
            self.p.timeline.add(*msg[1:])
        elif kind == "checkpoint":
            self.p.checkpoint = msg[1]
        elif kind == "error":
            self.p.failure = f"learner failed:\n{msg[1]}"
        elif kind == "update":
            self._row(msg[1], msg[2])

    def _pools(self, stats: dict) -> dict[str, float]:
        """The job's weight and activation pools on its GPU (the learner's part travels in its
        update stats, taken out of them here)."""
        actor = self.actor
        learner = {k: stats.pop(k) for k in (LEARNER_WEIGHTS, LEARNER_PEAK) if k in stats}
        staging = actor.plane.staging[actor.cfg.replica]
        weights = tensor_bytes([*actor.policy.parameters(), *actor.policy.buffers(), staging])
        return job_pools(weights, peak_allocated(actor.placement.device), learner)

    def _row(self, version: int, stats: dict) -> None:
        """The metrics after update ``version``: rates, busy shares and the staleness histogram over
        the updates since the last row written (``train.log_every`` of them), the rest as of now."""
        now = time.monotonic()
        actor, spec = self.actor, self.p.spec
        lanes = self.p.timeline.summary(self._window_start, now, parallel={"sample": len(self.pool.workers)})
        hist = self._window_hist
        for k, n in enumerate(stats.pop("staleness_hist", [])):
            hist[len(hist):] = [0] * (k + 1 - len(hist))
            hist[k] += n
        pools = self._pools(stats) if LEARNER_WEIGHTS in stats else {}
        values = {
            "version": float(version),
            "env_steps": float(actor.env_steps),
            "time_s": now - self.t_start,
            "env_steps_per_s": (actor.env_steps - self._window_steps) / max(now - self._window_start, 1e-9),
            "dropped_episodes": float(actor.dropped_episodes),
            "replaced_workers": float(self.pool.replaced_workers),
            "weight_wait_s": actor.weight_wait_s,
            "queue_depth": float(sum(q.depth() for q in actor.queues)),
            "acting_version": float(actor.version),
            **actor.episodes.summary(),
            **{k: float(v) for k, v in stats.items()},
            **pools,
        }
        for lane, s in lanes.items():
            values[f"{lane}_busy"] = s["busy"]
            values[f"{lane}_items_per_s"] = s["items_per_s"]
        if actor.placement.on_gpu:  # the GPU is busy while any lane that uses it is
            gpu = [iv for lane in GPU_LANES for iv in self.p.timeline.intervals(lane, self._window_start)]
            values["gpu_busy"] = covered_seconds(gpu, self._window_start, now) / max(now - self._window_start, 1e-9)
        publishes = self.p.timeline.intervals("distribute", self._window_start)
        if publishes:
            values["publish_ms"] = 1e3 * float(np.mean([iv.end - iv.start for iv in publishes]))
        self.last = values
        if version % max(spec.train.log_every, 1) == 0:
            self.p.on_progress(Progress(values, hist))
            self._window_start, self._window_steps, self._window_hist = now, actor.env_steps, []
