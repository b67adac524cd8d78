"""Busy intervals and item counts of the four lanes, for metrics and for proving overlap.

Every lane reports ``(lane, start, end, items)`` with ``time.monotonic()`` stamps, which
are comparable across processes on one host (CLOCK_MONOTONIC). From them come each
lane's busy fraction, its items/s, and whether two lanes ever ran at the same time.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from dvla.metric_names import LANES

GPU_LANES = ("infer", "learn", "distribute")
"""The lanes that run on the GPU when the job has one (simulation stays on the CPU)."""


class LaneRecorder(Protocol):
    """Where a lane reports a busy interval: the job's timeline, or a replica process's outbox."""

    def add(self, lane: str, start: float, end: float, items: int = 0) -> None: ...


@dataclass(frozen=True)
class Interval:
    lane: str
    start: float
    end: float
    items: int = 0


class LaneTimeline:
    """A bounded, thread-safe record of lane intervals."""

    def __init__(self, keep: int = 50_000) -> None:
        self._intervals: dict[str, deque[Interval]] = {lane: deque(maxlen=keep) for lane in LANES}
        self._lock = threading.Lock()

    def add(self, lane: str, start: float, end: float, items: int = 0) -> None:
        with self._lock:
            self._intervals[lane].append(Interval(lane, start, end, items))

    def intervals(self, lane: str, since: float = 0.0) -> list[Interval]:
        with self._lock:
            return [iv for iv in self._intervals[lane] if iv.end > since]

    def summary(self, since: float, until: float, parallel: dict[str, int] | None = None) -> dict[str, dict]:
        """Per lane: busy fraction of ``[since, until]`` (divided by how many run in
        parallel, e.g. the number of env workers) and items per second."""
        span = max(until - since, 1e-9)
        out = {}
        for lane in LANES:
            ivs = self.intervals(lane, since)
            busy = sum(max(0.0, min(iv.end, until) - max(iv.start, since)) for iv in ivs)
            out[lane] = {
                "busy": busy / span / (parallel or {}).get(lane, 1),
                "items_per_s": sum(iv.items for iv in ivs if since <= iv.start < until) / span,
            }
        return out


def _union(intervals: list[Interval]) -> list[tuple[float, float]]:
    """Disjoint, sorted spans covered by ``intervals`` (workers of one lane overlap)."""
    spans: list[tuple[float, float]] = []
    for iv in sorted(intervals, key=lambda iv: iv.start):
        if spans and iv.start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], iv.end))
        else:
            spans.append((iv.start, iv.end))
    return spans


def overlap_seconds(a: list[Interval], b: list[Interval]) -> float:
    """Total time during which some interval of ``a`` and some interval of ``b`` both ran."""
    x, y = _union(a), _union(b)
    total, i, j = 0.0, 0, 0
    while i < len(x) and j < len(y):
        total += max(0.0, min(x[i][1], y[j][1]) - max(x[i][0], y[j][0]))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return total


def covered_seconds(intervals: list[Interval], since: float, until: float) -> float:
    """Time within ``[since, until]`` when at least one of ``intervals`` ran (e.g. the GPU's
    busy time: the union of the lanes that use it)."""
    return sum(max(0.0, min(b, until) - max(a, since)) for a, b in _union(intervals))
