"""The small messages the lanes' processes send each other, one frozen dataclass each.

Why dataclasses and not tuples: a message is matched by its type and read by field name, so a
field added or moved breaks loudly where it is used, not silently where a tuple is unpacked by
position. Big data never travels here: observations, actions and trajectories stay in shared
memory (the data plane) and weights in the weight plane; a message carries at most an index, a
version, a few timings or a traceback.
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
