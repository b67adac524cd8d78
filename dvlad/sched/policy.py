"""Which queued jobs start now, and on which GPUs.

A pure function of its inputs, with no clock, store or process in sight, so every rule is tested
exhaustively by unit tests and the server only carries out the decisions.

Rules:

- **Across users, fair turns.** The next job considered is always one of the user who holds the
  fewest GPUs, then runs the fewest jobs (counting what this pass has started already), ties going
  to the user whose next job was submitted first. A user's priority never puts them ahead of
  another user, and a user with fifty queued jobs does not fill the node before another's first.
- **Within one user, priority.** A user's own queued jobs go in ``priority`` order (higher first),
  then submit order (FIFO).
- A job over its user's or one of its groups' limits (GPUs held, running jobs) is skipped; it does
  not hold anyone else back (limits are personal).
- **Head of line, per user.** A job that does not fit the free GPUs / CPU slots stays queued. Its
  user's later jobs of the *same* priority may still start in the room left (backfill); their jobs
  of *lower* priority may not, so a user's big high-priority job is never starved by their own
  stream of small ones. It holds *other* users back in nothing: if it did, any user could stall
  the whole node with one big job (and priority would again reach across users). So a big job
  waits until the room it needs is free at a pass; its user, holding less, has the first turn
  then, but smaller jobs of others may take room freed in between. Per-user GPU limits are how a
  lab keeps room for big jobs.
- A job bigger than the whole node (``Cluster.capacity``) holds nobody back: no amount of waiting
  would place it. dvlad refuses such jobs at submit; one can only be queued from before the node
  shrank (fewer CPU slots configured, a GPU NVML no longer sees), and it waits in case that is undone.
- GPU placement picks, among the free GPUs, the set with the best links (``link_score`` summed over
  its pairs: higher is better; dvlad derives it from the topology, :mod:`dvlad.gpu.links`); ties go
  to the lowest indices.

Every queued job that does not start gets its **pending reason** in the same pass (:func:`plan`), as
Slurm's ``squeue`` shows one: the rule above that held it back, with the figures (``resources``:
which of GPUs and CPU slots are short; ``priority``: behind which of its user's jobs; ``user limit``
or ``group limit``: which limit and how far it is used; ``bigger than the node``).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from dvlad.sched.memory_fit import MemoryAsk, SharedGpus

LinkScore = Callable[[int, int], float]


class QueuedJob(NamedTuple):
    """A queued job as the scheduler sees it (a tuple: a pass builds one per queued job, 10,000 of
    them in a few milliseconds)."""

    id: int
    user: str
    groups: tuple[str, ...]
    priority: int
    gpus: int
    cpus: int
    memory: MemoryAsk | None = None
    """Bytes asked on each GPU by a job that shares GPUs (:mod:`dvlad.sched.memory_fit`); None: it
    takes its GPUs whole."""


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
    """CPU slots (a job takes one per env worker)."""

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
    shared: SharedGpus = field(default_factory=SharedGpus)
    """Each GPU's memory and what sharing jobs take of the GPUs they run on (not in ``free_gpus``)."""


@dataclass(frozen=True)
class Decision:
    job_id: int
    gpu_ids: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """One pass's outcome: the jobs that start now, and why each other queued job waits."""

    starts: list[Decision]
    waiting: dict[int, str]
    """Job id -> its pending reason, ``"KIND: details"`` with KIND one of ``resources``, ``priority``,
    ``user limit``, ``group limit``, ``bigger than the node``."""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _over(limit: Limit, usage: Usage, job: QueuedJob) -> tuple[str, str] | None:
    """How starting ``job`` would break ``limit`` given ``usage``, and the limit's key; None when it
    would not."""
    if limit.running_jobs is not None and usage.running_jobs + 1 > limit.running_jobs:
        return f"runs {_count(usage.running_jobs, 'job')} of at most {limit.running_jobs}", "running_jobs"
    if limit.gpus is not None and usage.gpus + job.gpus > limit.gpus:
        return (f"holds {_count(usage.gpus, 'GPU')} and the job asks for {job.gpus} more, at most {limit.gpus}",
                "gpus")
    return None


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


class _Pass:
    """What one scheduling pass has left: free GPUs and CPU slots, and each user's and group's usage
    including the jobs this pass has started."""

    def __init__(self, cluster: Cluster, limits: Limits):
        self.cluster, self.limits = cluster, limits
        self.free_gpus, self.free_cpus = set(cluster.free_gpus), cluster.free_cpus
        self.users = {k: Usage(v.gpus, v.running_jobs) for k, v in cluster.user_usage.items()}
        self.groups = {k: Usage(v.gpus, v.running_jobs) for k, v in cluster.group_usage.items()}
        self.shared = SharedGpus(dict(cluster.shared.memory), dict(cluster.shared.taken),
                                 {g: set(keys) for g, keys in cluster.shared.bases.items()})

    def turn(self, user: str, next_job: QueuedJob) -> tuple[int, int, int, str]:
        """The heap key of ``user``'s turn: who holds least goes first (see the module docstring)."""
        usage = self.users.get(user, Usage())
        return usage.gpus, usage.running_jobs, next_job.id, user

    def limit_reason(self, job: QueuedJob) -> str | None:
        """Why starting ``job`` would break its user's or one of its groups' limits (the pending
        reason, naming the config key of the limit); None when it keeps within them."""
        over = _over(self.limits.for_user(job.user), self.users.setdefault(job.user, Usage()), job)
        if over:
            table = f"limits.users.{job.user}" if job.user in self.limits.users else "limits.default"
            return f"user limit: {job.user} {over[0]} ({table}.{over[1]})"
        for g in job.groups:
            if g in self.limits.groups:
                over = _over(self.limits.groups[g], self.groups.setdefault(g, Usage()), job)
                if over:
                    return f"group limit: group {g} {over[0]} (limits.groups.{g}.{over[1]})"
        return None

    def runs_its_most(self, user: str) -> bool:
        """Whether ``user`` runs as many jobs as their own limit allows: then none of their jobs can
        start in this pass (their usage only grows with their own starts), each for the same reason."""
        limit = self.limits.for_user(user).running_jobs
        return limit is not None and self.users.setdefault(user, Usage()).running_jobs >= limit

    def short(self, job: QueuedJob) -> str:
        """What ``job`` waits for, of what is free now: the pending reason of a job that does not fit."""
        wants = []
        if job.memory is not None:
            if self.shared.pick(self.free_gpus, job.gpus, job.memory) is None:
                wants.append(self.shared.wants(self.free_gpus, job.gpus, job.memory))
        elif job.gpus > len(self.free_gpus):
            wants.append(f"{_count(job.gpus, 'GPU')} ({len(self.free_gpus)} free)")
        if job.cpus > self.free_cpus:
            wants.append(f"{_count(job.cpus, 'CPU slot')} ({self.free_cpus} free)")
        return "resources: waits for " + " and ".join(wants)

    def too_big(self, job: QueuedJob) -> str:
        node = self.cluster.capacity
        assert node is not None
        if job.memory is not None and (why := self.shared.never_fits(job.gpus, job.memory)):
            return f"bigger than the node: {why}; it waits in case the node grows back"
        return (f"bigger than the node: asks for {_count(job.gpus, 'GPU')} and {_count(job.cpus, 'CPU slot')}, "
                f"the node has {_count(node.gpus, 'GPU')} and {_count(node.cpus, 'CPU slot')}; "
                "it waits in case the node grows back")

    def fit(self, job: QueuedJob) -> tuple[int, ...] | None:
        """GPUs for ``job`` from what is free now, or None when it does not fit now."""
        if job.cpus > self.free_cpus:
            return None
        if job.memory is not None:
            return self.shared.pick(self.free_gpus, job.gpus, job.memory)
        return pick_gpus(self.free_gpus, job.gpus, self.cluster.link_score)

    def has_room(self, gpus: int, cpus: int) -> bool:
        """Whether ``gpus`` GPUs and ``cpus`` CPU slots are still free."""
        return gpus <= len(self.free_gpus) and cpus <= self.free_cpus

    def fits_node(self, job: QueuedJob) -> bool:
        """Whether ``job`` would fit the idle node (unknown capacity: taken to fit)."""
        if job.memory is not None and self.shared.never_fits(job.gpus, job.memory):
            return False
        return self.cluster.capacity is None or self.cluster.capacity.holds(job.gpus, job.cpus)

    def start(self, job: QueuedJob, gpu_ids: tuple[int, ...]) -> Decision:
        """Take ``job``'s room and count it in its user's and groups' usage, so later turns and limit
        checks of this pass see it."""
        self.free_gpus -= set(gpu_ids)
        self.free_cpus -= job.cpus
        if job.memory is not None:
            self.shared.take(gpu_ids, job.memory)
        for usage in [self.users[job.user], *(self.groups.setdefault(g, Usage()) for g in job.groups)]:
            usage.gpus += job.gpus
            usage.running_jobs += 1
        return Decision(job.id, gpu_ids)


def _by_user(queue: Iterable[QueuedJob]) -> dict[str, deque[QueuedJob]]:
    """Each user's queued jobs in the order they want them: priority, then submit order."""
    waiting: dict[str, deque[QueuedJob]] = {}
    for job in sorted(queue, key=lambda j: (-j.priority, j.id)):
        waiting.setdefault(job.user, deque()).append(job)
    return waiting


def _drop_lower(jobs: deque[QueuedJob], head: QueuedJob, why: str, reasons: dict[int, str]) -> None:
    """Remove the jobs below ``head``'s priority (the tail: ``jobs`` is in priority order), each
    with its pending reason: behind ``head``, which waits for ``why``."""
    while jobs and jobs[-1].priority < head.priority:
        reasons[jobs.pop().id] = (f"priority: behind job {head.id} of {head.user} (priority {head.priority}), "
                                  f"which {why.removeprefix('resources: ')}")


def plan(queue: Iterable[QueuedJob], cluster: Cluster, limits: Limits) -> Plan:
    """Decide which of ``queue`` start now and where, in the order they were decided (fair turns,
    see the module docstring), and why each of the others waits. ``cluster`` is not modified.

    Stops taking turns once the room left is below every queued job's demand: nothing more can
    start, so the order of turns no longer matters, and the rest get their reasons user by user
    (the same reasons: limits, room and each user's own priorities no longer change in this pass)."""
    queue = list(queue)
    state = _Pass(cluster, limits)
    waiting = _by_user(queue)
    least_gpus = min((j.gpus for j in queue), default=0)
    least_cpus = min((j.cpus for j in queue), default=0)
    turns = [state.turn(user, jobs[0]) for user, jobs in waiting.items()]
    heapq.heapify(turns)
    decisions: list[Decision] = []
    reasons: dict[int, str] = {}
    while turns and state.has_room(least_gpus, least_cpus):
        user = heapq.heappop(turns)[-1]
        jobs = waiting[user]
        _take_turn(state, jobs, decisions, reasons)
        if jobs:
            heapq.heappush(turns, state.turn(user, jobs[0]))
    for jobs in waiting.values():  # nothing more fits (or nobody waits): only reasons are left
        while jobs:
            _take_turn(state, jobs, decisions, reasons)
    return Plan(decisions, reasons)


def _take_turn(state: _Pass, jobs: deque[QueuedJob], decisions: list[Decision], reasons: dict[int, str]) -> None:
    """Decide the head of one user's ``jobs``: start it (into ``decisions``) or give why it waits
    (into ``reasons``, with its user's lower priorities behind it when it lacks room)."""
    job = jobs.popleft()
    over = state.limit_reason(job)
    if over and state.runs_its_most(job.user):  # so do all the user's others: the same reason, at once
        reasons[job.id] = over
        reasons.update(dict.fromkeys([j.id for j in jobs], over))
        jobs.clear()
    elif over:
        reasons[job.id] = over
    elif (gpu_ids := state.fit(job)) is not None:
        decisions.append(state.start(job, gpu_ids))
    elif not state.fits_node(job):
        reasons[job.id] = state.too_big(job)
    else:
        reasons[job.id] = state.short(job)
        _drop_lower(jobs, job, reasons[job.id], reasons)  # head of line: this user's lower priorities wait


def schedule(queue: Iterable[QueuedJob], cluster: Cluster, limits: Limits) -> list[Decision]:
    """The jobs of ``queue`` that start now and where (:func:`plan` without the reasons)."""
    return plan(queue, cluster, limits).starts
