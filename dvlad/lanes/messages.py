"""The small messages the lanes' processes send each other, one frozen dataclass each.

Why dataclasses and not tuples: a message is matched by its type and read by field name, so a
field added or moved breaks loudly where it is used, not silently where a tuple is unpacked by
position. Big data never travels here: observations, actions and trajectories stay in shared
memory (the data plane) and weights in the weight plane; a message carries at most an index, a
version, a few timings or statistics, or a traceback.

From the learn lane to the job's reporter (``reporter.py``): :class:`LearnerReady` once, then per
update a :class:`LaneBusy` for the learn lane and one for the distribute lane, an
:class:`UpdateStats`, a :class:`Checkpointed` whenever it wrote a checkpoint; :class:`LearnerFailed`
if it died; in a job of several nodes an :class:`OtherNodes` per update.
"""

from __future__ import annotations

from dataclasses import dataclass

from dvlad.spaces import EnvSpec

# -- env workers (sample lane) <-> the pool the actor drives ------------------------------


@dataclass(frozen=True)
class WorkerBuilt:
    """A worker built its envs; the pool sizes the shared slots from their spec."""

    spec: EnvSpec


@dataclass(frozen=True)
class WorkerReady:
    """A worker mapped the slots and wrote fresh episodes into its own."""

    pid: int


@dataclass(frozen=True)
class StepGroup:
    """Run the commands the pool wrote in this worker's slots of ``group``."""

    group: int


@dataclass(frozen=True)
class GroupStepped:
    """A worker ran its slots of ``group``: between ``start`` and ``end`` (``time.monotonic()``),
    ``env_steps`` env steps."""

    group: int
    start: float
    end: float
    env_steps: int


@dataclass(frozen=True)
class WorkerFailed:
    """An env raised while building or stepping: a bug, reported with its traceback."""

    traceback: str


@dataclass(frozen=True)
class Shutdown:
    """Stop serving and exit."""


# -- the learn lane -> the job's reporter -------------------------------------------------


@dataclass(frozen=True)
class LearnerReady:
    """The learner has built its policy and published its first version; the actor may start."""

    version: int
    trained_env_steps: int
    """Counters to resume from (0 for a fresh job)."""
    pid: int
    rank: int = 0
    """Which learner rank (a job with several waits for every one)."""


@dataclass(frozen=True)
class LaneBusy:
    """A lane worked on ``items`` items from ``start`` to ``end`` (``time.monotonic()``, comparable
    across the job's processes): one interval of the job's :class:`~dvlad.lanes.timeline.LaneTimeline`."""

    lane: str
    start: float
    end: float
    items: int


@dataclass(frozen=True)
class UpdateStats:
    """The learner finished update ``version``: what the job's metric row reports of it."""

    version: int
    samples: int
    """Valid env steps trained on."""
    trained_env_steps: int
    """Env steps trained on since the job began."""
    staleness_mean: float
    staleness_max: float
    staleness_hist: tuple[int, ...]
    """Trained samples per staleness 0, 1, ... (learner version − acting version)."""
    losses: dict[str, float]
    """Means over the update's minibatches of the loss terms and optimiser figures, keyed by metric
    name (``loss``, ``pg_loss``, ``grad_norm``, ...; empty when no sample was valid)."""
    explained_variance: float | None
    """How well the critic's values predicted the returns (algorithms with a critic); None otherwise."""
    learn_s: float | None = None
    collective_s: float | None = None
    """Of ``learn_s``, the seconds in collectives with the other learner ranks (none: one rank)."""
    """Seconds the lane spent on the update, from taking the rollout out of the queue (set by the lane)."""
    learner_weight_bytes: int | None = None
    """On a GPU: the learner's part of the weight pool (weights and optimizer state)."""
    learner_peak_bytes: int | None = None
    """On a GPU, for a learner process of its own: its allocator's peak since the last update."""


@dataclass(frozen=True)
class Checkpointed:
    """A checkpoint of ``version`` is complete at ``path``."""

    path: str
    version: int


@dataclass(frozen=True)
class LearnerFailed:
    """The lane died; ``traceback`` says where and why."""

    traceback: str
    rank: int = 0


@dataclass(frozen=True)
class OtherNodes:
    """From a node's local learner rank 0, in a job of several nodes (``node_part.py``): what the
    ranks agreed before an update, or once more at the end, of the other nodes."""

    env_steps: int
    """The env steps the other nodes had sampled (the job's budget counts every node's)."""
    stop_reason: str | None = None
    """Another node stopped (its budget, a stop asked for): this one stops too, for that reason."""
    failure: str | None = None
    """Another node failed or went away: this node's part fails, with this reason."""
    weights_digest: tuple[float, float] | None = None
    """At the end: this node's final weights, as :func:`dvlad.lanes.ranks.weights_digest` sums them
    (every node's summary has it: equal on all nodes, and to that of the checkpoint)."""


@dataclass(frozen=True)
class VersionPublished:
    """A version reached every replica after ``seconds``; ``replica_seconds`` says when each one had it
    ((replica, seconds) pairs)."""

    version: int
    seconds: float
    replica_seconds: tuple[tuple[int, float], ...]


# -- actor replicas in processes of their own -> the job's main process ----------------------


@dataclass(frozen=True)
class ReplicaProgress:
    """What a replica did since its last report: the job's main process sums env steps over the
    replicas (the budget), keeps one episode window for all of them and one lane timeline."""

    replica: int
    env_steps: int
    """The replica's env steps since the job (re)started, in total."""
    episodes: list[tuple[float, bool, int]]
    """Episodes that ended since the last report: (return, success, length)."""
    intervals: list[tuple[str, float, float, int]]
    """Lane intervals since the last report: (lane, start, end, items)."""
    dropped_episodes: int
    replaced_workers: int
    weight_wait_s: float
    acting_version: int


@dataclass(frozen=True)
class ReplicaFailed:
    """A replica's set-up or loop raised: the job fails with this."""

    replica: int
    traceback: str
