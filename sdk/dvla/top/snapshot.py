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
from dvla import rates
from dvla.api import TERMINAL
from dvla.jobtext import gpus_column

ACTIVE = frozenset({"placing", "running", "cancelling"})
"""States in which a job holds resources and writes metrics: their runtime still grows."""
LANE_WINDOW_S = 10.0
LANE_WINDOW_UPDATES = 3
"""The lanes' figures span the newest rows covering at least 10 s and 3 learner updates, so a slow
learner's rate includes whole updates (see :mod:`dvla.rates`)."""


@dataclass(frozen=True)
class Pools:
    """A GPU's used memory split by who holds it: the job's weight pool, its activation pool, the rest."""

    weight: int
    activation: int
    other: int
    growing: bool = False
    """The activation pool has grown update after update (``gpu_activation_growing``)."""


@dataclass(frozen=True)
class PoolUse:
    """One pool of one job on a GPU, in bytes (``/v1/gpus``); None where unknown."""

    used: int | None = None
    """As the job's newest metric row reports it."""
    peak: int | None = None
    """The largest the job's rows reported so far."""
    budget: int | None = None
    """Its cap (``resources.weight_pool`` / ``activation_pool``); None: none."""
    estimate: int | None = None
    """dvlad's estimate of its peak from the spec; None where dvlad has none for the model."""


@dataclass(frozen=True)
class GpuJob:
    """One job on a GPU with its two pools (several jobs share a GPU by their budgets)."""

    label: str
    """``#ID user/name`` (the name only for who may read the job)."""
    weight: PoolUse
    activation: PoolUse
    growing: bool = False
    """The activation pool has grown update after update (``gpu_activation_growing``)."""

    @property
    def known(self) -> bool:
        """Whether there is any figure to show beyond the label."""
        return any(v is not None for pool in (self.weight, self.activation) for v in vars(pool).values())


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
    """``#ID user/name`` of the job on the GPU, ``N jobs`` when several share it, ``""`` when it is free."""
    pools: Pools | None
    """The split of ``memory_used``, only where every job on it reports its pools (else "pools n/a")."""
    jobs: tuple[GpuJob, ...] = ()
    """The jobs on the GPU, oldest first, with their pools and budgets."""


@dataclass(frozen=True)
class JobRow:
    """One line of the queue."""

    id: int
    user: str
    name: str
    state: str
    priority: int
    gpus: str
    """Where it is placed (``GPU 0``, ``GPUs 0,1``), else how many it asks for (``2 asked``), or ``CPU``
    (:func:`dvla.jobtext.gpus_column`)."""
    runtime_s: float | None
    """Seconds since it started (to its end if it ended); None if it never started."""
    reason: str = ""
    """Why a queued job waits (the daemon's ``pending_reason``), why a job failed or who cancelled it;
    empty otherwise."""

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Lane:
    """One of a job's four lanes over the window of its latest rows (:data:`LANE_WINDOW_S`)."""

    name: str
    items_per_s: float | None
    """Env steps (sample), observations (infer), samples (learn) or versions (distribute) per second
    (:func:`dvla.rates.lane_items_per_s`)."""
    busy: float | None
    """Fraction of the window the lane was busy, 0..1 (the sample lane's per worker)."""
    per_update_s: float | None = None
    """Seconds one update took (learn: ``learn_s``) or one version took to publish (distribute:
    ``publish_ms``), averaged over the window; None for the sample and infer lanes."""


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
    updates_per_min: float | None
    """Learner updates (weight versions) per minute over the lanes' window."""
    success: float | None
    """The latest success rate, None until :data:`~dvla.metric_names.SUCCESS_MIN_EPISODES` episodes ended."""
    episodes: int | None
    """Episodes ended so far."""
    success_rate: tuple[float | None, ...]
    """Per row, oldest first: the sparklines' data; None where a row has no figure to show."""
    env_steps_per_s: tuple[float | None, ...]
    reason: str = ""
    """The job's :func:`reason` in full (the queue's cell may show a short form of it)."""

    @property
    def has_rows(self) -> bool:
        """Whether the job has written a metric row yet (a queued job has not: no figures to show)."""
        return bool(self.env_steps_per_s)


@dataclass(frozen=True)
class NodeView:
    """The daemon's machine: its CPU and RAM (None from a daemon that does not report them), its CPU
    slots and GPUs for jobs."""

    name: str
    cpu_percent: float | None
    cpu_count: int | None
    ram_used: int | None
    ram_total: int | None
    cpu_slots: int
    free_cpu_slots: int
    gpus: int
    free_gpus: int


@dataclass(frozen=True)
class Snapshot:
    """Everything one screen shows: one poll of the daemon (or the last good one plus an error)."""

    host: str = ""
    gpu_source: str = ""
    node: NodeView | None = None
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


def reason(job: Mapping[str, Any]) -> str:
    """The queue's REASON column, as squeue's: why a queued job waits (``–`` before the scheduler's
    first pass over it), why a job failed or was cancelled; nothing for jobs under way or done."""
    if job["state"] == "queued":
        return job.get("pending_reason") or "–"
    return (job.get("reason") or "") if job["state"] in {"failed", "cancelled"} else ""


def job_row(job: Mapping[str, Any], now: float) -> JobRow:
    return JobRow(id=job["id"], user=job.get("user", ""), name=job.get("name") or "", state=job["state"],
                  priority=int(job.get("priority") or 0), gpus=gpus_column(job), runtime_s=runtime(job, now),
                  reason=reason(job))


def pool_use(figures: Mapping[str, Any] | None) -> PoolUse:
    figures = figures or {}
    keys = ("used", "peak", "budget", "estimate")
    return PoolUse(*(None if figures.get(k) is None else int(figures[k]) for k in keys))


def gpu_jobs(gpu: Mapping[str, Any]) -> tuple[GpuJob, ...]:
    """The jobs of one GPU of a ``/v1/gpus`` reply; from a daemon older than ``jobs``, its one ``job``
    without pools."""
    listed = gpu.get("jobs")
    if listed is None:
        listed = [gpu["job"]] if gpu.get("job") else []
    return tuple(GpuJob(holder_label(j), pool_use(j.get("weight_pool")), pool_use(j.get("activation_pool")),
                        bool(j.get("activation_growing"))) for j in listed)


def pools_of(jobs: Sequence[GpuJob], memory_used: int | None) -> Pools | None:
    """The GPU's used memory split into its jobs' weight pools, activation pools and the rest; None
    without a job, where a job has not reported its pools, or where NVML is absent (the split needs
    the GPU's used memory for "other")."""
    if not jobs or memory_used is None or any(j.weight.used is None or j.activation.used is None for j in jobs):
        return None
    weight = sum(j.weight.used or 0 for j in jobs)
    activation = sum(j.activation.used or 0 for j in jobs)
    return Pools(weight, activation, max(0, memory_used - weight - activation), any(j.growing for j in jobs))


def holder_label(job: Mapping[str, Any] | None) -> str:
    if not job:
        return ""
    who = f"#{job['id']} {job.get('user', '')}"
    return f"{who}/{job['name']}" if job.get("name") else who


def gpu_views(reply: Mapping[str, Any]) -> tuple[GpuView, ...]:
    """The GPUs of a ``/v1/gpus`` reply, each with its jobs and their pools."""
    views = []
    for g in reply.get("gpus", []):
        jobs = gpu_jobs(g)
        views.append(GpuView(
            index=g["index"], name=g.get("name", ""), utilization=g.get("utilization"),
            memory_used=g.get("memory_used"), memory_total=g.get("memory_total"),
            temperature=g.get("temperature"), power_draw=g.get("power_draw"), power_limit=g.get("power_limit"),
            holder=jobs[0].label if len(jobs) == 1 else f"{len(jobs)} jobs" if jobs else "",
            pools=pools_of(jobs, g.get("memory_used")), jobs=jobs))
    return tuple(views)


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        if row.get(key) is not None:
            return float(row[key])
    return None


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[float | None, ...]:
    return tuple(float(r[key]) if r.get(key) is not None else None for r in rows)


def lanes(rows: Sequence[Mapping[str, Any]]) -> tuple[tuple[Lane, ...], float | None]:
    """The four lanes over the window of the newest rows that spans :data:`LANE_WINDOW_S` and
    :data:`LANE_WINDOW_UPDATES` updates (all the rows fetched, if they span less), and the learner's
    updates per minute over it. Where the rows give no window (a single row, rows without times) a
    figure is the newest row's own."""
    if not rows:
        return tuple(Lane(name, None, None) for name in m.LANES), None
    start, end = rates.window_start(rows, LANE_WINDOW_S, LANE_WINDOW_UPDATES), len(rows) - 1

    def windowed(figure: float | None, key: str) -> float | None:
        return figure if figure is not None else _last(rows[-1:], key)

    publish_ms = windowed(rates.mean(rows, m.PUBLISH_MS, start, end), m.PUBLISH_MS)
    per_update = {"learn": windowed(rates.mean(rows, m.LEARN_S, start, end), m.LEARN_S),
                  "distribute": None if publish_ms is None else publish_ms / 1e3}
    per_s = rates.updates_per_s(rows, start, end)
    views = tuple(Lane(name, windowed(rates.lane_items_per_s(rows, name, start, end), m.LANE_ITEMS_PER_S[name]),
                       windowed(rates.lane_busy(rows, name, start, end), m.LANE_BUSY[name]), per_update.get(name))
                  for name in m.LANES)
    return views, None if per_s is None else 60 * per_s


def job_detail(job: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> JobDetail:
    """The selected job's lanes, queue, staleness and series from its metric rows (oldest first)."""
    lane_views, per_min = lanes(rows)
    episodes = _last(rows, m.EPISODES)
    return JobDetail(id=job["id"], name=job.get("name") or "", state=job["state"], lanes=lane_views,
                     queue_depth=_last(rows, m.QUEUE_DEPTH), staleness_mean=_last(rows, m.STALENESS_MEAN),
                     staleness_max=_last(rows, m.STALENESS_MAX), version=_last(rows, m.VERSION),
                     env_steps=_last(rows, m.ENV_STEPS), updates_per_min=per_min,
                     success=m.success_rate_of(rows[-1]) if rows else None,
                     episodes=None if episodes is None else int(episodes),
                     success_rate=tuple(m.success_rate_of(r) for r in rows),
                     env_steps_per_s=_series(rows, m.ENV_STEPS_PER_S), reason=reason(job))


def node_view(reply: Sequence[Mapping[str, Any]], gpus: Mapping[str, Any]) -> NodeView | None:
    """The first node of a ``/v1/nodes`` reply (dvlad runs one node), None without one."""
    if not reply:
        return None
    node = reply[0]
    held = sum(1 for g in node.get("gpus", []) if not g.get("free"))
    return NodeView(name=node.get("name") or gpus.get("host", ""), cpu_percent=node.get("cpu_percent"),
                    cpu_count=node.get("cpu_count"), ram_used=node.get("ram_used"), ram_total=node.get("ram_total"),
                    cpu_slots=int(node.get("cpu_slots") or 0), free_cpu_slots=int(node.get("free_cpu_slots") or 0),
                    gpus=len(node.get("gpus", [])), free_gpus=len(node.get("gpus", [])) - held)


def gpu_notes(reply: Mapping[str, Any]) -> tuple[str, ...]:
    """What to say about the GPU data itself: replayed from a recording, or no GPUs at all."""
    host = reply.get("host") or "this node"
    if not reply.get("gpus"):
        return (f"no GPUs on {host}",)
    if reply.get("source") != "nvml":
        return ("no NVML: recorded topology",)
    return ()


def build(jobs: Sequence[Mapping[str, Any]], gpus: Mapping[str, Any], selected: int | None,
          rows: Sequence[Mapping[str, Any]], now: float, nodes: Sequence[Mapping[str, Any]] = ()) -> Snapshot:
    """One screen's data from one poll: ``jobs`` (``/v1/jobs``), ``gpus`` (``/v1/gpus``), the metric
    ``rows`` of job ``selected`` (see :func:`pick_selected`), ``nodes`` (``/v1/nodes``), at wall-clock
    time ``now``."""
    chosen = next((j for j in jobs if j["id"] == selected), None)
    return Snapshot(host=gpus.get("host", ""), gpu_source=gpus.get("source", ""), node=node_view(nodes, gpus),
                    gpus=gpu_views(gpus), jobs=tuple(job_row(j, now) for j in jobs),
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


def fmt_rate(value: float | None) -> str:
    """A rate to three figures or more, so a slow lane's reads ``0.033``, not ``0.0``; ``–`` when unknown."""
    if value is None:
        return "–"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def fmt_seconds(seconds: float | None) -> str:
    """A short duration with its unit: ``2.2 ms``, ``12.3 s``, ``4.5 min``; ``–`` when unknown."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{1e3 * seconds:.1f} ms"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def fmt_pair(used: float | None, total: float | None) -> str:
    """Used of total memory, the unit once where both share it: ``30.0/80.0 GiB``."""
    a, b = fmt_bytes(used), fmt_bytes(total)
    unit = b.rpartition(" ")[2]
    return f"{a.removesuffix(' ' + unit)}/{b}" if a.endswith(" " + unit) else f"{a}/{b}"
