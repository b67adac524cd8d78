"""The replication plan: the order in which a new weight version travels from the learner's GPU
to every actor replica's GPU.

Why a plan and not a loop of copies from the learner: a loop sends the whole model over the
learner's links once per replica, so eight replicas cost seven copies out of one GPU. A tree
sends it **once over each slow link** (across PCIe switches or CPU sockets) and then fans it out
inside the faster groups (an NVLink island, one PCIe switch), every GPU that has the version
passing it on, so the depth inside a group of n stays logarithmic. Executed chunk by chunk
(:mod:`dvlad.lanes.replicate`), the copies of a path pipeline: a version takes about
``fanout`` model transfers over the slowest link it must cross, plus one chunk per level.

``fanout`` bounds how many copies one GPU sends: 2 (the default) is a binary tree, each GPU's
outbound bandwidth shared by at most two copies, depth ⌊log2 n⌋; 1 is a pipelined chain (one
transfer's time whatever n, as NCCL's ring broadcast, but depth n − 1).

The hierarchy comes from the topology record alone (``dvla.topology``: the names ``dvla topo``
prints), from the finest group to the whole node: NVLink islands, then PIX, PXB, PHB and NODE
neighbourhoods, then SYS (everything). At each level the holder's group sends one copy into every
other group of the level (a binomial tree over the groups), then each group does the same inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dvla.topology import link_matrix

LEVELS = ("NV", "INT", "PIX", "PXB", "PHB", "NODE", "SYS")
"""Link kinds from the fastest to the slowest; groups are formed at each of them in turn."""
UNKNOWN = len(LEVELS)
"""The rank of a link NVML did not describe ("?"): treated as slower than SYS."""
HOST = "CPU"
"""The link name of copies between CPU devices (host memory)."""


@dataclass(frozen=True)
class Copy:
    """One copy of a whole version (in chunks) from ``src``'s buffer to ``dst``'s."""

    src: int
    dst: int
    link: str
    """How ``dvla topo`` names the link: ``NV#``, ``PIX``, ``PXB``, ``PHB``, ``NODE``, ``SYS``, or
    ``X`` (the same device), ``CPU`` (host memory)."""
    round: int
    """1 + the round in which ``src`` got the version + the copies ``src`` sent before this one:
    copies of one round run at the same time over different links."""

    def as_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "link": self.link, "round": self.round}


@dataclass(frozen=True)
class ReplicationPlan:
    source: int
    copies: tuple[Copy, ...]
    """In the order they start: a copy's ``src`` always received the version in an earlier one."""

    @property
    def depth(self) -> int:
        """Rounds until the last replica has the version (0: nothing to copy)."""
        return max((c.round for c in self.copies), default=0)

    def as_json(self) -> list[dict[str, Any]]:
        return [c.as_dict() for c in self.copies]

    def describe(self) -> str:
        """One line for the job's log: every copy as ``src->dst(LINK)`` in order, and the depth."""
        hops = " ".join(f"{c.src}->{c.dst}({c.link})" for c in self.copies) or "none"
        return f"replication from {self.source}: {hops}; depth {self.depth}"


def link_rank(link: str) -> int:
    """Where a link name sits in :data:`LEVELS` (NVLink of any width is level 0)."""
    if link.startswith("NV"):
        return 0
    return LEVELS.index(link) if link in LEVELS else UNKNOWN


def link_key(link: str) -> tuple[int, int]:
    """Sort key of a link, best first: by level, then more bonded NVLinks first."""
    lanes = int(link[2:]) if link.startswith("NV") and link[2:].isdigit() else 0
    return link_rank(link), -lanes


def link_between(topology: dict[str, Any] | None) -> _Links:
    """The link name between any two devices of ``topology`` (``CPU`` devices without one)."""
    return _Links(topology)


class _Links:
    """The link between any two GPUs of the record, by index."""

    def __init__(self, topology: dict[str, Any] | None) -> None:
        self._names: dict[tuple[int, int], str] = {}
        if topology is not None:
            indices, rows = link_matrix(topology)
            for a, row in zip(indices, rows, strict=True):
                for b, name in zip(indices, row, strict=True):
                    self._names[a, b] = name

    def __call__(self, a: int, b: int) -> str:
        if a == b:
            return "X"
        return self._names.get((a, b), HOST if not self._names else "?")

    def within(self, members: list[int], level: int) -> list[list[int]]:
        """``members`` split into groups joined by links of ``level`` or better (connected
        components: an NVLink chain A–B–C is one island)."""
        groups: list[list[int]] = []
        for m in members:
            joined = [g for g in groups if any(link_rank(self(m, o)) <= level for o in g)]
            merged = [m] + [x for g in joined for x in g]
            groups = [g for g in groups if g not in joined] + [sorted(merged)]
        return sorted(groups)


def plan_replication(topology: dict[str, Any] | None, source: int, targets: Sequence[int],
                     fanout: int = 2) -> ReplicationPlan:
    """The copies that bring a version from ``source`` to every one of ``targets`` exactly once.

    ``topology`` is the node's record (``None``: CPU devices, every link is host memory). A target
    equal to ``source`` is a device-local copy (link ``X``: the learner's GPU also holds a replica),
    made after the copies that leave the device."""
    if fanout < 1:
        raise ValueError(f"fanout must be at least 1, got {fanout}")
    plan = _Planner(link_between(topology), source, fanout)
    wanted = sorted(set(targets))
    plan.spread(sorted({source, *wanted}), UNKNOWN)
    if source in wanted:
        plan.copy(source, source)
    return ReplicationPlan(source, tuple(sorted(plan.copies, key=lambda c: c.round)))


class _Planner:
    def __init__(self, links: _Links, source: int, fanout: int) -> None:
        self.links, self.fanout = links, fanout
        self.copies: list[Copy] = []
        self.got = {source: 0}  # device -> the round in which it received the version
        self.sent = {source: 0}  # device -> copies it has sent so far

    def copy(self, src: int, dst: int) -> None:
        self.sent[src] += 1
        copy = Copy(src, dst, self.links(src, dst), self.got[src] + self.sent[src])
        if dst != src:
            self.got[dst], self.sent[dst] = copy.round, 0
        self.copies.append(copy)

    def spread(self, members: list[int], level: int) -> None:
        """Bring the version to every member of a group that already holds it somewhere.

        The group splits into the groups of the next finer level; holders send one copy into each
        group that has none (the earliest-free holder under its fan-out, to the member it is best
        linked to), so every link between those groups carries one copy; then each group spreads
        inside."""
        if len(members) == 1:
            return
        links, got, sent = self.links, self.got, self.sent
        groups = links.within(members, level - 1)  # below NVLink (level 0): every device on its own
        if len(groups) == 1:
            self.spread(members, level - 1)
            return
        pending = [g for g in groups if not any(m in got for m in g)]
        while pending:
            holders = [m for m in members if m in got]
            free = [h for h in holders if sent[h] < self.fanout] or holders
            src = min(free, key=lambda h: (got[h] + sent[h], h))
            group = min(pending, key=lambda g: (min(link_key(links(src, m)) for m in g), g))
            self.copy(src, min(group, key=lambda m: (link_key(links(src, m)), m)))
            pending.remove(group)
        for group in groups:
            self.spread(group, level - 1)
