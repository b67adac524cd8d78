"""A job's lane rates and busy shares over a span of its metric rows, for ``dvla top`` and ``dvla report``.

Why not take each row's ``learn_items_per_s`` and ``distribute_items_per_s`` as written: a row covers
the time since the previous row, and it counts a lane's item (an update, a published version) only if
the item began inside that span. The learn and distribute lanes finish one item at a time, and the
learner often begins its next update before the row of the previous one is made, so a row counts one
update or none: the figures saw-tooth between 0 and twice the rate, or read 0 throughout for a slow
learner that is 100% busy. Their rates come instead from what the rows count without loss, over a
span of several rows: the weight version (one per update, one published version each) and the
samples each update trained on. The sample and infer lanes finish many items in every row; their
rates, and every lane's busy share, are the rows' own figures weighted by the seconds each row covers.

A span is two row indices ``(start, end)``: it covers the time from row ``start`` to row ``end``, so
the figures of rows ``start + 1 .. end``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dvla import metric_names as m

Row = Mapping[str, Any]
Rows = Sequence[Row]


def _num(row: Row, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, int | float) else None


def _seconds(rows: Rows, start: int, end: int) -> float | None:
    """The seconds from row ``start`` to row ``end`` (None if either has no time, or time went back:
    a job resumed into the same file starts its clock again)."""
    t0, t1 = _num(rows[start], m.TIME_S), _num(rows[end], m.TIME_S)
    return t1 - t0 if t0 is not None and t1 is not None and t1 > t0 else None


def time_weighted(rows: Rows, key: str, start: int, end: int) -> float | None:
    """The mean of ``key`` over the span, each row weighted by the seconds it covers."""
    total = covered = 0.0
    for k in range(start + 1, end + 1):
        value, dt = _num(rows[k], key), _seconds(rows, k - 1, k)
        if value is not None and dt is not None:
            total, covered = total + value * dt, covered + dt
    return total / covered if covered > 0 else None


def updates_per_s(rows: Rows, start: int, end: int) -> float | None:
    """Learner updates (= weight versions published) per second over the span."""
    seconds = _seconds(rows, start, end)
    v0, v1 = _num(rows[start], m.VERSION), _num(rows[end], m.VERSION)
    return (v1 - v0) / seconds if seconds and v0 is not None and v1 is not None and v1 >= v0 else None


def learn_samples_per_s(rows: Rows, start: int, end: int) -> float | None:
    """Samples the learner trained on per second over the span: each row's update size times the
    updates it stands for (``train.log_every`` of them; its ``samples`` is the last one's)."""
    seconds = _seconds(rows, start, end)
    if not seconds:
        return None
    total = 0.0
    for k in range(start + 1, end + 1):
        samples, v0, v1 = _num(rows[k], m.SAMPLES), _num(rows[k - 1], m.VERSION), _num(rows[k], m.VERSION)
        if samples is None or v0 is None or v1 is None or v1 < v0:
            return None
        total += samples * (v1 - v0)
    return total / seconds


def lane_items_per_s(rows: Rows, lane: str, start: int, end: int) -> float | None:
    """The lane's items per second over the span (sample: env steps; infer: observations; learn:
    samples; distribute: versions). Rows without the counts the learn lane's rate needs (written before rows had
    ``samples``) fall back to the rows' own figures."""
    if lane == "learn":
        rate = learn_samples_per_s(rows, start, end)
        return rate if rate is not None else time_weighted(rows, m.LANE_ITEMS_PER_S[lane], start, end)
    if lane == "distribute":
        return updates_per_s(rows, start, end)
    return time_weighted(rows, m.LANE_ITEMS_PER_S[lane], start, end)


def lane_busy(rows: Rows, lane: str, start: int, end: int) -> float | None:
    return time_weighted(rows, m.LANE_BUSY[lane], start, end)


def mean(rows: Rows, key: str, start: int, end: int) -> float | None:
    """The plain mean of ``key`` over the span's rows (a per-update figure: ``learn_s``, ``publish_ms``)."""
    values = [v for k in range(start + 1, end + 1) if (v := _num(rows[k], key)) is not None]
    return sum(values) / len(values) if values else None


def window_start(rows: Rows, min_seconds: float, min_updates: int) -> int:
    """Where a window ending at the newest row starts: the newest row from which the window spans at
    least ``min_seconds`` and ``min_updates`` updates; the oldest row when the rows do not reach so far."""
    end = len(rows) - 1
    for start in range(end - 1, -1, -1):
        seconds = _seconds(rows, start, end)
        v0, v1 = _num(rows[start], m.VERSION), _num(rows[end], m.VERSION)
        if seconds is not None and seconds >= min_seconds and v0 is not None and v1 is not None \
                and v1 - v0 >= min_updates:
            return start
    return 0


def rolling(rows: Rows, figure: Callable[[Rows, int, int], float | None], span: int) -> list[float | None]:
    """``figure`` at every row over the ``span`` rows that end there (fewer at the start; None at the
    first row, which has no row before it)."""
    return [None] + [figure(rows, max(0, end - span), end) for end in range(1, len(rows))]
