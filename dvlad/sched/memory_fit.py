"""Memory-fit placement: jobs that share GPUs, packed by their budgets.

A job with ``resources.share_gpus`` asks for bytes on each of its GPUs (its weight-pool budget, its
activation-pool budget and what its processes hold outside both) instead of whole GPUs. It may go
on a GPU no job holds or on one that other sharing jobs use, while the bytes asked there sum to at
most the GPU's memory. A job without ``share_gpus`` still takes its GPUs whole, and never goes on a
GPU a sharing job uses (its "auto" activation budget is the rest of the GPU).

Packing is best fit: among the GPUs with room, the one with the least room left that still fits
comes first, and GPUs already shared before idle ones, so that idle GPUs stay whole for the jobs
that need them whole. Ties go to the lowest index.

Pure decisions like the rest of :mod:`dvlad.sched`: no clock, no store, nothing of dvlad imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class MemoryAsk:
    """What a sharing job needs on each of its GPUs, in bytes, and of what."""

    weight: int
    activation: int
    other: int
    base: int = 0
    """Bytes of a shared read-only base model (``resources.share_base``): held once per GPU by its
    holder, whichever jobs use it, so counted only for the first of them on a GPU."""
    base_key: str | None = None
    """Which base (its content key): jobs with the same key on a GPU share one copy."""

    @property
    def total(self) -> int:
        """Bytes on a GPU where its base is not held yet."""
        return self.weight + self.activation + self.other + self.base

    def describe(self) -> str:
        base = f", shared base {_gib(self.base)} once per GPU" if self.base else ""
        return (f"{_gib(self.total)} a GPU (weight pool {_gib(self.weight)}, activation pool "
                f"{_gib(self.activation)}, outside the pools {_gib(self.other)}{base})")


@dataclass
class SharedGpus:
    """Each GPU's memory and what sharing jobs have taken of it, as one pass sees them."""

    memory: dict[int, int | None] = field(default_factory=dict)
    """GPU index -> its memory in bytes (None: unknown, as for a published topology without it)."""
    taken: dict[int, int] = field(default_factory=dict)
    """GPU index -> bytes the sharing jobs running on it asked for (GPUs with at least one), each
    shared base counted once."""
    bases: dict[int, set[str]] = field(default_factory=dict)
    """GPU index -> the keys of the shared bases held on it (counted in ``taken`` already)."""

    def room(self, gpu: int) -> int:
        return (self.memory.get(gpu) or 0) - self.taken.get(gpu, 0)

    def need(self, gpu: int, ask: MemoryAsk) -> int:
        """Bytes ``ask`` takes on ``gpu``: without its base where that base is held there already."""
        held = ask.base_key is not None and ask.base_key in self.bases.get(gpu, ())
        return ask.total - (ask.base if held else 0)

    def pick(self, free: Iterable[int], count: int, ask: MemoryAsk) -> tuple[int, ...] | None:
        """``count`` GPUs with room for ``ask`` each, best fit first (see the module docstring):
        shared GPUs with room, then idle (``free``) ones; None when fewer have room."""
        shared = [g for g in self.taken if self.room(g) >= self.need(g, ask)]
        idle = [g for g in free if g not in self.taken and (self.memory.get(g) or 0) >= ask.total]
        ranked = sorted(shared, key=lambda g: (self.room(g), g)) + sorted(idle, key=lambda g: (self.room(g), g))
        return tuple(sorted(ranked[:count])) if len(ranked) >= count else None

    def take(self, gpus: Iterable[int], ask: MemoryAsk) -> None:
        for g in gpus:
            self.taken[g] = self.taken.get(g, 0) + self.need(g, ask)
            if ask.base_key is not None:
                self.bases.setdefault(g, set()).add(ask.base_key)

    def wants(self, free: Iterable[int], count: int, ask: MemoryAsk) -> str:
        """What a sharing job that does not fit now waits for (its pending reason says so), with the
        room of the GPUs it could use."""
        free = set(free)
        rooms = sorted(((self.room(g), g) for g in set(self.taken) | free if self.memory.get(g)), reverse=True)
        best = ", ".join(f"GPU {g} {_gib(r)}" for r, g in rooms[:4]) or "none"
        gpus = "a GPU" if count == 1 else f"{count} GPUs"
        return f"{_gib(ask.total)} free on {gpus} (most room now: {best})"

    def never_fits(self, count: int, ask: MemoryAsk) -> str | None:
        """Why no amount of waiting places the job (fewer than ``count`` GPUs have its bytes even when
        idle), with the figures; None when it fits the idle node."""
        big = sorted((m for m in self.memory.values() if m), reverse=True)
        if sum(1 for m in big if m >= ask.total) >= count:
            return None
        largest = f"the largest GPU has {_gib(big[0])}" if big else "no GPU of the node has a known memory size"
        gpus = "one GPU" if count == 1 else f"each of {count} GPUs"
        return f"asks for {ask.describe()} on {gpus}; {largest}"
