"""The job's reporter: drains the lanes' messages and turns each update into a metric row.

Why a thread of the job's main process: a row joins what the learner reports of its update
(:class:`~dvlad.lanes.messages.UpdateStats`) with what the actors did (replica 0 in this process;
the others report :class:`~dvlad.lanes.messages.ReplicaProgress`), the env workers, the queues and
the lanes' timeline, and no actor must wait for it. Every key it writes is a constant of
:mod:`dvla.metric_names`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dvla import metric_names as m
from dvlad.lanes.actor import Actor
from dvlad.lanes.env_workers import EnvWorkerPool
from dvlad.lanes.messages import (
    Checkpointed,
    LaneBusy,
    LearnerFailed,
    OtherNodes,
    ReplicaFailed,
    ReplicaProgress,
    UpdateStats,
    VersionPublished,
)
from dvlad.lanes.timeline import GPU_LANES, LaneTimeline, covered_seconds
from dvlad.lanes.trajectory import TrajectoryQueue
from dvlad.lanes.vram import job_pools, peak_allocated, tensor_bytes
from dvlad.sharing import base as shared


@dataclass
class Progress:
    """One metric row: what the job reports after every ``train.log_every`` learner updates."""

    values: dict[str, float]
    staleness_hist: list[int] = field(default_factory=list)


class Reporter(threading.Thread):
    """Handles the learn lane's messages as they come: intervals go to the timeline, updates become
    rows (given to ``on_progress`` every ``log_every`` of them), and the latest checkpoint and the
    lane's failure are kept for the pipeline."""

    def __init__(self, timeline: LaneTimeline, actor: Actor, pool: EnvWorkerPool, messages, t_start: float,
                 log_every: int, on_progress: Callable[[Progress], None], *, queues: list[TrajectoryQueue],
                 replicas: int = 1, workers: int = 0, learner_ranks: int = 1) -> None:
        super().__init__(name="dvla-reporter", daemon=True)
        self.timeline, self.actor, self.pool, self.messages = timeline, actor, pool, messages
        self.queues, self.replicas, self.learner_ranks = queues, replicas, learner_ranks
        self.workers = workers or len(pool.workers)
        """Env workers of all replicas (the sample lane's parallelism)."""
        self._others: dict[int, ReplicaProgress] = {}  # the latest report of each replica in a process of its own
        self.t_start, self.log_every, self.on_progress = t_start, max(log_every, 1), on_progress
        self.last: dict[str, float] = {}
        """The row of the latest update, whether given to ``on_progress`` or not."""
        self.checkpoint: str | None = None
        """The latest complete checkpoint."""
        self.failure: str | None = None
        """Why the learn lane died, with its traceback (or another node failed); None while it has not."""
        self.other_nodes = OtherNodes(0)
        """The latest the learner ranks agreed of the other nodes, in a job of several nodes."""
        self.on_row: Callable[[dict[str, float]], None] = lambda values: None
        """Called with every update's row, given to ``on_progress`` or not (the job's stop rule)."""
        self.on_checkpoint: Callable[[int], None] = lambda version: None
        """Called with the version of each complete checkpoint (what a resume carries is saved beside it)."""
        self._done = threading.Event()
        self._window_start = t_start
        self._window_steps = actor.env_steps
        self._window_hist: list[int] = []
        self._window_published: list[VersionPublished] = []

    @property
    def env_steps(self) -> int:
        """The job's env steps: this node's and, in a job of several, the other nodes' as of the ranks'
        latest agreement."""
        return self.node_env_steps + self.other_nodes.env_steps

    @property
    def node_env_steps(self) -> int:
        """This node's env steps: replica 0's and the latest the others reported."""
        return self.actor.env_steps + sum(r.env_steps for r in self._others.values())

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
            self.handle(msg)
            try:
                msg = self.messages.get_nowait()
            except queue.Empty:
                return

    def handle(self, msg: object) -> None:
        """Take one message of the learn lane into account."""
        match msg:
            case LaneBusy(lane, start, end, items):
                self.timeline.add(lane, start, end, items)
            case VersionPublished():
                self._window_published.append(msg)
            case UpdateStats():
                self._row(msg)
            case ReplicaProgress():
                self._others[msg.replica] = msg
                for interval in msg.intervals:
                    self.timeline.add(*interval)
                for episode in msg.episodes:
                    self.actor.episodes.add(*episode)
            case Checkpointed(path, version):
                self.checkpoint = path
                self.on_checkpoint(version)
            case OtherNodes(failure=str(failure)):
                self.failure = failure
            case OtherNodes():
                self.other_nodes = msg
            case LearnerFailed(tb, rank):
                self.failure = f"learner{f' rank {rank}' if self.learner_ranks > 1 else ''} failed:\n{tb}"
            case ReplicaFailed(replica, tb):
                self.failure = f"actor replica {replica} failed:\n{tb}"

    def _pools(self, learner_weights: int, learner_peak: int | None) -> dict[str, float]:
        """The job's weight and activation pools on its GPU: the actor's part measured here, the
        learner's from its update."""
        actor = self.actor
        staging = actor.plane.staging[actor.cfg.replica]
        weights = tensor_bytes(shared.private([*actor.policy.parameters(), *actor.policy.buffers(), staging]))
        return job_pools(weights, peak_allocated(actor.placement.device), learner_weights, learner_peak)

    def _row(self, stats: UpdateStats) -> None:
        """The metrics after an update: rates, busy shares and the staleness histogram over the
        updates since the last row given out (``train.log_every`` of them), the rest as of now."""
        now = time.monotonic()
        actor, timeline, since = self.actor, self.timeline, self._window_start
        hist = self._window_hist
        for k, n in enumerate(stats.staleness_hist):
            hist[len(hist):] = [0] * (k + 1 - len(hist))
            hist[k] += n
        others = list(self._others.values())
        env_steps = self.env_steps
        values = {
            m.VERSION: float(stats.version),
            m.ENV_STEPS: float(env_steps),
            m.TIME_S: now - self.t_start,
            m.ENV_STEPS_PER_S: (env_steps - self._window_steps) / max(now - since, 1e-9),
            m.DROPPED_EPISODES: float(actor.dropped_episodes + sum(r.dropped_episodes for r in others)),
            m.REPLACED_WORKERS: float(self.pool.replaced_workers + sum(r.replaced_workers for r in others)),
            m.WEIGHT_WAIT_S: actor.weight_wait_s + sum(r.weight_wait_s for r in others),
            m.QUEUE_DEPTH: float(sum(q.depth() for q in self.queues)),
            m.ACTING_VERSION: float(min([actor.version, *(r.acting_version for r in others)])),
            **actor.episodes.summary(),
            **_update_metrics(stats),
        }
        if stats.learner_weight_bytes is not None:
            values.update(self._pools(stats.learner_weight_bytes, stats.learner_peak_bytes))
        lanes = timeline.summary(since, now, parallel={"sample": self.workers, "infer": self.replicas,
                                                       "learn": self.learner_ranks})
        for lane, s in lanes.items():
            values[m.LANE_BUSY[lane]] = s["busy"]
            values[m.LANE_ITEMS_PER_S[lane]] = s["items_per_s"]
        if actor.placement.on_gpu:  # the GPU is busy while any lane that uses it is
            gpu = [iv for lane in GPU_LANES for iv in timeline.intervals(lane, since)]
            values[m.GPU_BUSY] = covered_seconds(gpu, since, now) / max(now - since, 1e-9)
        # by arrival, not by time: a version is published after its update's row is made, so a time
        # window ending at that row would miss it
        if self._window_published:
            published = self._window_published
            values[m.PUBLISH_MS] = 1e3 * float(np.mean([p.seconds for p in published]))
            per_replica: dict[int, list[float]] = {}
            for p in published:
                for replica, seconds in p.replica_seconds:
                    per_replica.setdefault(replica, []).append(seconds)
            values[m.PUBLISH_MS_REPLICAS] = [1e3 * float(np.mean(per_replica[r])) for r in sorted(per_replica)]
        self.last = values
        self.on_row(values)
        if stats.version % self.log_every == 0:
            self.on_progress(Progress(values, hist))
            self._window_start, self._window_steps, self._window_hist = now, env_steps, []
            self._window_published = []


def _update_metrics(stats: UpdateStats) -> dict[str, float]:
    """The row's part that the learner measured."""
    values = {
        **stats.losses,
        m.SAMPLES: float(stats.samples),
        m.TRAINED_ENV_STEPS: float(stats.trained_env_steps),
        m.STALENESS_MEAN: stats.staleness_mean,
        m.STALENESS_MAX: stats.staleness_max,
    }
    if stats.explained_variance is not None:
        values[m.EXPLAINED_VARIANCE] = stats.explained_variance
    if stats.learn_s is not None:
        values[m.LEARN_S] = stats.learn_s
    if stats.collective_s is not None:
        values[m.COLLECTIVE_S] = stats.collective_s
    return values
