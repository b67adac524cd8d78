"""Which queued jobs start now, and on which GPUs.

A pure function of its inputs, with no clock, store or process in sight, so every rule is tested
exhaustively by unit tests and the server only carries out the decisions.

Rules, in order:

- Higher ``priority`` first; inside one priority, submit order (FIFO).
- A job over its user's or one of its groups' limits (GPUs held, running jobs) is skipped; it does
  not hold anyone else back (limits are personal).
- A job that does not fit the free GPUs / CPU slots stays queued. Later jobs of the *same*
  priority may still start in the room left (backfill); jobs of *lower* priority may not, so a big
  high-priority job is never starved by a stream of small low-priority ones.
- A job bigger than the whole node (``Cluster.capacity``) holds nobody back: no amount of waiting
  would place it. dvlad refuses such jobs at submit; one can only be queued from before the node
  shrank (fewer CPU slots configured, a GPU NVML no longer sees), and it waits in case that is undone.
- GPU placement picks, among the free GPUs, the set with the best links (``link_score``: higher is
  better, from the topology); ties go to the lowest indices.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

LinkScore = Callable[[int, int], float]


@dataclass(frozen=True)
class QueuedJob:
    id: int
    user: str
    groups: tuple[str, ...]
    priority: int
    gpus: int
    cpus: int


@dataclass(frozen=True)
class Limit:
    """At most this many GPUs held / jobs running at once; None: no limit."""

    gpus: int | None = None
    running_jobs: int | None = None


@dataclass(frozen=True)
class Limits:
    default_user: Limit = Limit()
    """Applies to every user without an entry in ``users``."""
    users: dict[str, Limit] = field(default_factory=dict)
    groups: dict[str, Limit] = field(default_factory=dict)
    """Shared by all members of the group together."""

    def for_user(self, user: str) -> Limit:
        return self.users.get(user, self.default_user)


@dataclass
class Usage:
    gpus: int = 0
    running_jobs: int = 0


@dataclass(frozen=True)
class Capacity:
    """What a node has in all, busy or not."""

    gpus: int
    cpus: int
    """CPU slots (a job takes ``env.workers + 1``)."""

    def holds(self, gpus: int, cpus: int) -> bool:
        """Whether a job of ``gpus`` and ``cpus`` fits this node once it is idle: if not, waiting
        will never place it."""
        return gpus <= self.gpus and cpus <= self.cpus


@dataclass
class Cluster:
    free_gpus: frozenset[int]
    free_cpus: int
    user_usage: dict[str, Usage] = field(default_factory=dict)
    group_usage: dict[str, Usage] = field(default_factory=dict)
    link_score: LinkScore | None = None
    """Pairwise link quality of two GPU indices (topology hook); None: every set is as good."""
    capacity: Capacity | None = None
    """The whole node; None: unknown, every job is taken to fit it."""


@dataclass(frozen=True)
class Decision:
    job_id: int
    gpu_ids: tuple[int, ...]


def _within(limit: Limit, usage: Usage, job: QueuedJob) -> bool:
    if limit.running_jobs is not None and usage.running_jobs + 1 > limit.running_jobs:
        return False
    return limit.gpus is None or usage.gpus + job.gpus <= limit.gpus


def pick_gpus(free: Iterable[int], count: int, link_score: LinkScore | None = None) -> tuple[int, ...] | None:
    """The best-linked ``count`` GPUs among ``free`` (lowest indices on ties); None if too few."""
    ordered = sorted(free)
    if count > len(ordered):
        return None
    if count <= 1 or link_score is None:
        return tuple(ordered[:count])
    best, best_score = None, float("-inf")
    for combo in itertools.combinations(ordered, count):  # lexicographic: the first best wins ties
        score = sum(link_score(a, b) for a, b in itertools.combinations(combo, 2))
        if score > best_score:
            best, best_score = combo, score
    return best


def schedule(queue: Iterable[QueuedJob], cluster: Cluster, limits: Limits) -> list[Decision]:
    """Decide which of ``queue`` start now and where. ``cluster`` is not modified."""
    free_gpus = set(cluster.free_gpus)
    free_cpus = cluster.free_cpus
    users = {k: Usage(v.gpus, v.running_jobs) for k, v in cluster.user_usage.items()}
    groups = {k: Usage(v.gpus, v.running_jobs) for k, v in cluster.group_usage.items()}
    decisions: list[Decision] = []
    blocked_priority: int | None = None
    for job in sorted(queue, key=lambda j: (-j.priority, j.id)):
        if blocked_priority is not None and job.priority < blocked_priority:
            break
        user = users.setdefault(job.user, Usage())
        if not _within(limits.for_user(job.user), user, job):
            continue
        if any(g in limits.groups and not _within(limits.groups[g], groups.setdefault(g, Usage()), job)
               for g in job.groups):
            continue
        gpu_ids = pick_gpus(free_gpus, job.gpus, cluster.link_score) if job.cpus <= free_cpus else None
        if gpu_ids is None:
            if cluster.capacity is None or cluster.capacity.holds(job.gpus, job.cpus):
                blocked_priority = job.priority
            continue
        free_gpus -= set(gpu_ids)
        free_cpus -= job.cpus
        for usage in [user, *(groups.setdefault(g, Usage()) for g in job.groups)]:
            usage.gpus += job.gpus
            usage.running_jobs += 1
        decisions.append(Decision(job.id, gpu_ids))
    return decisions
