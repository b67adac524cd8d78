"""What ``dvla top`` shows, as plain frozen data built from the daemon's replies, with no I/O.

Why apart from the poller and the widgets: every rule about what to show (which job is selected, what
a GPU's memory bar is split into, what a missing NVML field becomes, how long a job has run) lives in
pure functions that a unit test feeds dicts, so the screen code only draws and the poller only asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dvla import metric_names as m

ACTIVE = frozenset({"placing", "running", "cancelling"})
"""States in which a job holds resources and writes metrics: their runtime still grows."""


@dataclass(frozen=True)
class Pools:
    """A GPU's used memory split by who holds it: the job's weight pool, its activation pool, the rest."""

    weight: int
    activation: int
    other: int


@dataclass(frozen=True)
class GpuView:
    """One GPU as shown. Live fields are None where the node has no NVML (a recorded topology)."""

    index: int
    name: str
    utilization: float | None
    memory_used: int | None
    memory_total: int | None
    temperature: float | None
    power_draw: float | None
    power_limit: float | None
    holder: str
    """``#ID user/name`` of the job holding the GPU, or ``""`` when it is free."""
    pools: Pools | None
    """The split of ``memory_used``, only where the holding job reports its pools (else "pools n/a")."""


@dataclass(frozen=True)
class JobRow:
    """One line of the queue."""

    id: int
    user: str
    name: str
    state: str
    priority: int
    gpus: str
    """The GPU indices it holds (``0,1``), or how many it asks for while queued, or ``-`` for none."""
    runtime_s: float | None
    """Seconds since it started (to its end if it ended); None if it never started."""


@dataclass(frozen=True)
class Lane:
    """One of a job's four lanes over its last update window, as the job's metric rows report it."""

    name: str
    items_per_s: float | None
    busy: float | None
    """Fraction of the window the lane was busy, 0..1 (may exceed 1 for a lane of parallel workers)."""


@dataclass(frozen=True)
class JobDetail:
    """The selected job's pipeline, from its latest metric rows (all None before its first row)."""

    id: int
    name: str
    state: str
    lanes: tuple[Lane, ...]
    queue_depth: float | None
    staleness_mean: float | None
    staleness_max: float | None
    version: float | None
    env_steps: float | None
    success_rate: tuple[float, ...]
    """Per row, oldest first: the sparklines' data."""
    env_steps_per_s: tuple[float, ...]


@dataclass(frozen=True)
class Snapshot:
    """Everything one screen shows: one poll of the daemon (or the last good one plus an error)."""

    host: str = ""
    gpu_source: str = ""
    gpus: tuple[GpuView, ...] = ()
    jobs: tuple[JobRow, ...] = ()
    detail: JobDetail | None = None
    error: str = ""
    """Why the data is stale (``daemon unreachable: <where>``), or ``""`` when it is fresh."""
    notes: tuple[str, ...] = ()
    """Caveats to show next to the data, e.g. ``no NVML: recorded topology``."""
    polls_per_s: float = 0.0
    """The refresh rate this monitor achieved lately (see :class:`~dvla.top.poller.RateMeter`)."""


def pick_selected(jobs: Sequence[Mapping[str, Any]], wanted: int | None) -> int | None:
    """The job whose lanes to show: ``wanted`` while it is listed; else the newest running job (what a
    person opens top to look at); else the newest job; None with no jobs."""
    ids = [j["id"] for j in jobs]
    if wanted in ids:
        return wanted
    running = [j["id"] for j in jobs if j["state"] in ACTIVE]
    return (running or ids or [None])[-1]


def runtime(job: Mapping[str, Any], now: float) -> float | None:
    started = job.get("started_at")
    if started is None:
        return None
    end = job.get("ended_at") if job["state"] not in ACTIVE else None
    return max(0.0, (end if end is not None else now) - started)


def job_row(job: Mapping[str, Any], now: float) -> JobRow:
    held = job.get("gpu_ids") or []
    gpus = ",".join(str(i) for i in held) if held else (f"({job['gpus']})" if job.get("gpus") else "-")
    return JobRow(id=job["id"], user=job.get("user", ""), name=job.get("name") or "", state=job["state"],
                  priority=int(job.get("priority") or 0), gpus=gpus, runtime_s=runtime(job, now))


def pools_of(rows: Sequence[Mapping[str, Any]], memory_used: int | None) -> Pools | None:
    """The pool split from the newest row that reports both pools; None if none does or NVML is absent
    (the split needs the GPU's used memory for "other")."""
    for row in reversed(rows):
        if m.GPU_WEIGHT_BYTES in row and m.GPU_ACTIVATION_BYTES in row:
            if memory_used is None:
                return None
            weight, activation = int(row[m.GPU_WEIGHT_BYTES]), int(row[m.GPU_ACTIVATION_BYTES])
            return Pools(weight, activation, max(0, memory_used - weight - activation))
    return None


def holder_label(job: Mapping[str, Any] | None) -> str:
    if not job:
        return ""
    who = f"#{job['id']} {job.get('user', '')}"
    return f"{who}/{job['name']}" if job.get("name") else who


def gpu_views(reply: Mapping[str, Any], selected: int | None,
              rows: Sequence[Mapping[str, Any]]) -> tuple[GpuView, ...]:
    """The GPUs of a ``/v1/gpus`` reply. Pools are known only for GPUs of the selected job (its metric
    rows are the only ones fetched: one metrics call per poll, never one per job)."""
    views = []
    for g in reply.get("gpus", []):
        holder = g.get("job")
        mine = holder is not None and holder.get("id") == selected
        views.append(GpuView(
            index=g["index"], name=g.get("name", ""), utilization=g.get("utilization"),
            memory_used=g.get("memory_used"), memory_total=g.get("memory_total"),
            temperature=g.get("temperature"), power_draw=g.get("power_draw"), power_limit=g.get("power_limit"),
            holder=holder_label(holder), pools=pools_of(rows, g.get("memory_used")) if mine else None))
    return tuple(views)


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        if row.get(key) is not None:
            return float(row[key])
    return None


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[float, ...]:
    return tuple(float(r[key]) for r in rows if r.get(key) is not None)


def job_detail(job: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> JobDetail:
    """The selected job's lanes, queue, staleness and series from its metric rows (oldest first)."""
    lanes = tuple(Lane(name, _last(rows, m.LANE_ITEMS_PER_S[name]), _last(rows, m.LANE_BUSY[name]))
                  for name in m.LANES)
    return JobDetail(id=job["id"], name=job.get("name") or "", state=job["state"], lanes=lanes,
                     queue_depth=_last(rows, m.QUEUE_DEPTH), staleness_mean=_last(rows, m.STALENESS_MEAN),
                     staleness_max=_last(rows, m.STALENESS_MAX), version=_last(rows, m.VERSION),
                     env_steps=_last(rows, m.ENV_STEPS), success_rate=_series(rows, m.SUCCESS_RATE),
                     env_steps_per_s=_series(rows, m.ENV_STEPS_PER_S))


def gpu_notes(reply: Mapping[str, Any]) -> tuple[str, ...]:
    """What to say about the GPU data itself: replayed from a recording, or no GPUs at all."""
    host = reply.get("host") or "this node"
    if not reply.get("gpus"):
        return (f"no GPUs on {host}",)
    if reply.get("source") != "nvml":
        return ("no NVML: recorded topology",)
    return ()


def build(jobs: Sequence[Mapping[str, Any]], gpus: Mapping[str, Any], selected: int | None,
          rows: Sequence[Mapping[str, Any]], now: float) -> Snapshot:
    """One screen's data from one poll: ``jobs`` (``/v1/jobs``), ``gpus`` (``/v1/gpus``), the metric
    ``rows`` of job ``selected`` (see :func:`pick_selected`), at wall-clock time ``now``."""
    chosen = next((j for j in jobs if j["id"] == selected), None)
    return Snapshot(host=gpus.get("host", ""), gpu_source=gpus.get("source", ""),
                    gpus=gpu_views(gpus, selected, rows), jobs=tuple(job_row(j, now) for j in jobs),
                    detail=job_detail(chosen, rows) if chosen is not None else None, notes=gpu_notes(gpus))


def fmt_bytes(n: float | None) -> str:
    """Binary units as nvidia-smi shows memory (MiB, GiB); ``–`` where NVML is absent."""
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_duration(seconds: float | None) -> str:
    """``1:02:03`` style (``-`` before a job starts), like htop's TIME+ column."""
    if seconds is None:
        return "-"
    s = int(seconds)
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def fmt_num(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    """A value, or ``–`` when the daemon or the job does not know it."""
    return "–" if value is None else f"{value:{spec}}{suffix}"
