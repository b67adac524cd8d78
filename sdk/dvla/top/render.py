"""Rich renderables for ``dvla top``'s panels, each made from :mod:`dvla.top.snapshot` data alone.

Why separate from the widgets: drawing a GPU row or a lane row is a pure function of a snapshot, so it
is checked without a terminal, and the textual widgets only place these on screen. Bars use distinct
block characters per part (weight █, activation ▓, other ▒, free ░) so they read without colour too,
as in a pane capture or over a plain ssh terminal.

Why the wide panels measure their width: a cut number misleads (``607/70…`` W), so the GPU table and
the node line take the most detailed of their layouts that fits the width they are given, dropping or
shortening whole columns (bars, then the pools, the name's vendor, temperature, power), never cutting a
figure; the sparklines draw one cell per row, as many of the newest rows as fit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from dvla import metric_names as m
from dvla.top.snapshot import (
    GpuJob,
    GpuView,
    JobDetail,
    NodeView,
    PoolUse,
    Snapshot,
    fmt_bytes,
    fmt_num,
    fmt_pair,
    fmt_rate,
    fmt_seconds,
)

BAR = 20
"""Width of the utilisation and memory bars, in cells, where the terminal has room."""
FREE = ("░", "grey35")
MEMORY_LEGEND = "memory: █ weight ▓ activation ▒ other ░ free"


def bar(parts: list[tuple[float, str, str]], total: float, width: int = BAR) -> Text:
    """A bar of ``width`` cells with one run of ``(amount, char, style)`` per part, the rest free."""
    text = Text()
    used = 0
    for amount, char, style in parts:
        cells = min(width - used, round(width * amount / total)) if total > 0 else 0
        text.append(char * cells, style=style)
        used += cells
    text.append(FREE[0] * (width - used), style=FREE[1])
    return text


def load_style(percent: float) -> str:
    return "red" if percent >= 90 else "yellow" if percent >= 50 else "green"


def natural_width(console: Console, options: ConsoleOptions, renderable: RenderableType) -> int:
    """The width ``renderable`` takes when nothing limits it."""
    return Measurement.get(console, options.update_width(10_000), renderable).maximum


def widest_fitting(console: Console, options: ConsoleOptions, layouts: Sequence[object],
                   build: Callable[[object], RenderableType]) -> RenderableType:
    """``build`` of the first of ``layouts`` (most detailed first) whose natural width fits the width
    given; the last one where none does."""
    for layout in layouts[:-1]:
        built = build(layout)
        if natural_width(console, options, built) <= options.max_width:
            return built
    return build(layouts[-1])


class Flow:
    """Phrases joined by `` · `` on as many lines as the width needs, each line broken only between
    two phrases, so a figure never parts from its label (``staleness mean 0.56 max 1`` stays whole);
    a phrase wider than the whole width wraps on its own."""

    SEP = " · "

    def __init__(self, parts: Sequence[Text]):
        self.parts = parts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        line = Text()
        for part in self.parts:
            if line and line.cell_len + len(self.SEP) + part.cell_len > options.max_width:
                yield line
                line = Text()
            line.append_text(Text(self.SEP) if line else Text()).append_text(part)
        if line:
            yield line

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widths = [part.cell_len for part in self.parts] or [0]
        return Measurement(max(widths), sum(widths) + len(self.SEP) * (len(widths) - 1))


ELLIPSIS = "…"
PARENTHESES = re.compile(r" \([^)]*\)")


def reason_forms(reason: str) -> list[str]:
    """``reason`` and its shorter forms, longest first: its first clause (to the first ``;``, then
    the first ``,``), each without its parenthesised asides (a config key, a free count), and its
    category, the part before the first ``: `` (``resources``, ``priority``, ``user limit``: what
    squeue's short reason codes say). Every form but the whole ends in ``…``: there is more to read
    in the selected job's panel."""
    first = reason.split(";")[0]
    clauses = {reason, first, first.split(",")[0], reason.split(",")[0]}
    forms = {form for clause in clauses for form in (clause, PARENTHESES.sub("", clause))}
    if ": " in reason:
        forms.add(reason.split(": ")[0])
    return sorted({reason} | {form.rstrip() + ELLIPSIS for form in forms if form != reason}, key=cell_len, reverse=True)


def fit_reason(reason: str, width: int) -> str:
    """The longest of :func:`reason_forms` that fits ``width`` cells; where none does, the category
    (wider than ``width``: the table scrolls sideways rather than cut a code), or for a reason without
    one, the reason cut after the last word that fits (``…`` after it)."""
    forms = reason_forms(reason)
    for form in forms:
        if cell_len(form) <= width:
            return form
    if ": " in reason:
        return forms[-1]
    cut = reason[:max(width - 1, 1)]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + ELLIPSIS


# -- the GPUs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuLayout:
    """Which columns the GPU table shows, and how."""

    bar: int
    """Cells of the memory bar (0: figures only)."""
    util_bar: bool
    pools: str
    """``full`` (``weight 16.0 GiB · act …``), ``short`` (``█16.0 ▓10.0 ▒4.0 GiB``) or ``""`` (no column)."""
    vendor: bool
    """The name as NVML gives it (``NVIDIA H200``), or without the vendor (``H200``)."""
    temp: bool = True
    power: bool = True


GPU_LAYOUTS = (
    GpuLayout(BAR, True, "full", True),
    GpuLayout(BAR, True, "short", True),
    GpuLayout(10, True, "short", True),
    GpuLayout(10, True, "", True),
    GpuLayout(10, True, "", False),
    GpuLayout(10, False, "", False),
    GpuLayout(0, False, "", False),
    GpuLayout(0, False, "", False, temp=False),
    GpuLayout(0, False, "", False, temp=False, power=False),
)
"""Most detailed first; :class:`GpuTable` takes the first that fits."""


def util_cell(gpu: GpuView, width: int = BAR) -> Text:
    if gpu.utilization is None:
        return Text("–")
    text = bar([(gpu.utilization, "█", load_style(gpu.utilization))], 100.0, width) if width else Text()
    return text.append(f"{' ' if width else ''}{gpu.utilization:3.0f}%")


def memory_cell(gpu: GpuView, width: int = BAR) -> Text:
    shown = fmt_pair(gpu.memory_used, gpu.memory_total)
    if gpu.memory_used is None or not width:
        return Text(shown)
    total = gpu.memory_total or 0
    if gpu.pools is None:
        return bar([(gpu.memory_used, "█", "green")], total, width).append(f" {shown}")
    p = gpu.pools
    return bar([(p.weight, "█", "magenta"), (p.activation, "▓", "cyan"), (p.other, "▒", "yellow")],
               total, width).append(f" {shown}")


def pools_cell(gpu: GpuView, form: str = "full") -> str:
    if gpu.pools is None:
        return "pools n/a" if form == "full" else "n/a"
    p = gpu.pools
    growing = " ↑" if p.growing else ""  # the activation pool keeps growing: memory creeping to its cap
    if form == "full":
        return (f"weight {fmt_bytes(p.weight)} · act {fmt_bytes(p.activation)}{growing} · "
                f"other {fmt_bytes(p.other)}")
    gib = 1 << 30
    return f"█{p.weight / gib:.1f} ▓{p.activation / gib:.1f}{growing} ▒{p.other / gib:.1f} GiB"


def _of(use: PoolUse, unit: float) -> str:
    """``used/budget`` of a pool in ``unit`` (``–`` for what is unknown or has no budget)."""
    used = "–" if use.used is None else f"{use.used / unit:.1f}"
    return used if use.budget is None else f"{used}/{use.budget / unit:.1f}"


def job_pools_cell(job: GpuJob, form: str = "full") -> str:
    """One job's pools on its GPU: each pool's size over its budget, and in full the activation
    pool's peak against dvlad's estimate (what admission counted)."""
    gib = 1 << 30
    growing = " ↑" if job.growing else ""
    if form != "full":
        return f"█{_of(job.weight, gib)} ▓{_of(job.activation, gib)}{growing} GiB"
    act = job.activation
    peak = "" if act.peak is None and act.estimate is None else (
        f" · peak {fmt_num(None if act.peak is None else act.peak / gib, '.1f')}"
        f" est {fmt_num(None if act.estimate is None else act.estimate / gib, '.1f')}")
    return f"weight {_of(job.weight, gib)} · act {_of(act, gib)}{growing}{peak} GiB"


def short_name(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` → ``H100 80GB HBM3``."""
    return name.removeprefix("NVIDIA ").removeprefix("Tesla ")


def gpu_table_for(snap: Snapshot, layout: GpuLayout, expand: bool = True) -> Table:
    """The GPU table in one layout: every figure whole; only the job column may be cut (``…``)."""
    table = Table(expand=expand, box=None, pad_edge=False, header_style="bold")
    columns = ["GPU", "name", "util", "memory"] + (["pools"] if layout.pools else []) \
        + (["temp"] if layout.temp else []) + (["power"] if layout.power else [])
    for name in columns:
        right = name in ("temp", "power")
        table.add_column(name, no_wrap=True, overflow="ignore", justify="right" if right else "left")
    table.add_column("job", no_wrap=True, overflow="ellipsis", ratio=1, min_width=4)
    for g in snap.gpus:
        cells: list[RenderableType] = [str(g.index), g.name if layout.vendor else short_name(g.name),
                                       util_cell(g, layout.bar if layout.util_bar else 0), memory_cell(g, layout.bar)]
        if layout.pools:
            cells.append(pools_cell(g, layout.pools))
        if layout.temp:
            cells.append(fmt_num(g.temperature, ".0f", "°C"))
        if layout.power:
            cells.append(f"{fmt_num(g.power_draw, '.0f')}/{fmt_num(g.power_limit, '.0f')} W")
        table.add_row(*cells, g.holder or "–")
        if layout.pools and (len(g.jobs) > 1 or any(j.known for j in g.jobs)):
            for job in g.jobs:  # one line per job: its pools against its budgets
                blanks = ["", "", "", ""] + [""] * (layout.temp + layout.power)
                table.add_row(*blanks[:4], job_pools_cell(job, layout.pools), *blanks[4:], f"└ {job.label}")
    return table


class GpuTable:
    """One row per GPU, in the most detailed :data:`GPU_LAYOUTS` that fits the width it is drawn in."""

    def __init__(self, snap: Snapshot):
        self.snap = snap

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        yield widest_fitting(console, options, GPU_LAYOUTS,
                             lambda layout: gpu_table_for(self.snap, layout, expand=True))  # type: ignore[arg-type]

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)


def gpu_table(snap: Snapshot) -> GpuTable:
    """The GPU table (empty when there are none: the notes say so)."""
    return GpuTable(snap)


# -- the node ------------------------------------------------------------------------------------------


def node_parts(node: NodeView, width: int) -> list[Text]:
    """CPU, RAM (with bars of ``width`` cells, none at 0), CPU slots and GPUs of the node."""
    cpu = Text("CPU ", style="bold")
    if node.cpu_percent is None:
        cpu.append("–")
    else:
        if width:
            cpu.append_text(bar([(node.cpu_percent, "█", load_style(node.cpu_percent))], 100.0, width)).append(" ")
        cpu.append(f"{node.cpu_percent:3.0f}%")
    if node.cpu_count:
        cpu.append(f" of {node.cpu_count}")
    ram = Text("RAM ", style="bold")
    if node.ram_used is not None and node.ram_total and width:
        percent = 100 * node.ram_used / node.ram_total
        ram.append_text(bar([(node.ram_used, "█", load_style(percent))], node.ram_total, width)).append(" ")
    ram.append(fmt_pair(node.ram_used, node.ram_total))
    parts = [cpu, ram, Text("CPU slots ", style="bold").append(
        f"{node.cpu_slots - node.free_cpu_slots}/{node.cpu_slots} used")]
    if node.gpus:
        parts.append(Text("GPUs ", style="bold").append(f"{node.gpus - node.free_gpus}/{node.gpus} held"))
    return parts


class NodeLine:
    """The node's CPU, RAM, CPU slots and GPUs on one line: with bars where they fit, figures only
    where not, one per line where even those do not fit."""

    def __init__(self, node: NodeView):
        self.node = node

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        layouts = ((BAR, "   "), (10, "   "), (0, "   "), (0, "\n"))
        yield widest_fitting(console, options, layouts, lambda layout: Text(layout[1]).join(  # type: ignore[index]
            node_parts(self.node, layout[0])))  # type: ignore[index]


# -- the selected job ----------------------------------------------------------------------------------


def lanes_table(detail: JobDetail) -> Table:
    """The four lanes over the window of the newest rows (``dvla.top.snapshot.lanes``): items/s, busy,
    and for the learn and distribute lanes the time one update (one version's publish) takes."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("lane", no_wrap=True)
    table.add_column("items/s", justify="right", no_wrap=True)
    table.add_column("busy", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("per update", justify="right", no_wrap=True)
    for lane in detail.lanes:
        busy = bar([(min(lane.busy, 1.0), "█", "cyan")], 1.0, 8) if lane.busy is not None else Text("")
        each = fmt_seconds(lane.per_update_s) if lane.name in ("learn", "distribute") else ""
        table.add_row(lane.name, fmt_rate(lane.items_per_s),
                      fmt_num(None if lane.busy is None else 100 * lane.busy, ".0f", "%"), busy, each)
    return table


def success_text(detail: JobDetail) -> str:
    """``success 0.42 (312 episodes)``; ``success – (12 of 20 episodes)`` until enough have ended."""
    if detail.success is not None:
        count = "" if detail.episodes is None else f" ({detail.episodes:,} episodes)"
        return f"success {detail.success:.2f}{count}"
    if detail.episodes is None:
        return "success –"
    return f"success – ({detail.episodes:,} of {m.SUCCESS_MIN_EPISODES} episodes)"


def pipeline_parts(detail: JobDetail) -> list[str]:
    """Updates per minute, queue depth, staleness and progress of the selected job, one phrase each
    (:class:`Flow` breaks a line only between them); none before the job's first metric row."""
    if not detail.has_rows:
        return []
    return [f"{fmt_num(detail.updates_per_min, '.1f')} updates/min",
            f"queue depth {fmt_num(detail.queue_depth, '.0f')}",
            f"staleness mean {fmt_num(detail.staleness_mean, '.2f')} max {fmt_num(detail.staleness_max, '.0f')}",
            f"version {fmt_num(detail.version, '.0f')}", f"env steps {fmt_num(detail.env_steps, ',.0f')}"]


def detail_title(detail: JobDetail) -> Group:
    """The selected job's head line (id, name, state, pipeline figures), then the whole of its reason
    (why it waits, why it failed, who cancelled it), wrapped: the queue's REASON cell may show only its
    short form (:func:`fit_reason`)."""
    head = Text(f"job {detail.id} · {detail.name or '-'} · {detail.state}", style="bold")
    parts: list[RenderableType] = [Flow([head, *map(Text, pipeline_parts(detail))])]
    if detail.reason:
        label = "why it waits: " if detail.state == "queued" else "reason: "
        parts.append(Text.assemble((label, "bold"), detail.reason))
    return Group(*parts)


LEVELS = " ▁▂▃▄▅▆▇█"


class Sparkline:
    """A title line, then ``height`` rows of one cell per value, newest last, as many of the newest
    values as fit beside the axis labels, which give the scale (``hi`` on the top row, ``lo`` on the
    bottom one; with one row, ``lo–hi`` before it). A value at ``lo`` still draws ``▁``; a missing value
    (None) leaves its cell blank. ``titles``: the title, then shorter forms for narrower widths."""

    def __init__(self, titles: Sequence[str], values: Sequence[float | None], lo: float, hi: float,
                 fmt: str = ".2f", height: int = 2):
        self.titles, self.values, self.lo, self.hi, self.fmt, self.height = titles, values, lo, hi, fmt, height

    def columns(self, cells: int) -> list[str]:
        """The newest ``cells`` values, each as its column of characters, bottom row first."""
        span, steps = self.hi - self.lo, 8 * self.height
        out = []
        for value in self.values[-cells:] if cells > 0 else []:
            if value is None:
                out.append(" " * self.height)
                continue
            share = 0.5 if span <= 0 else min(max((value - self.lo) / span, 0.0), 1.0)
            level = max(1, round(share * steps))
            out.append("".join(LEVELS[min(max(level - 8 * row, 0), 8)] for row in range(self.height)))
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        yield widest_fitting(console, options, self.titles, lambda title: Text(title, no_wrap=True,  # type: ignore[arg-type]
                                                                                  overflow="ellipsis"))
        labels = [f"{self.hi:{self.fmt}}", f"{self.lo:{self.fmt}}"]
        if self.height == 1:
            labels = [f"{labels[1]}–{labels[0]}"] * 2
        pad = max(len(label) for label in labels)
        columns = self.columns(options.max_width - pad - 1)
        for row in reversed(range(self.height)):
            label = labels[0] if row == self.height - 1 else labels[1] if row == 0 else ""
            line = Text(f"{label:>{pad}}┤", style="grey50")
            line.append("".join(col[row] for col in columns), style="cyan")
            yield line


def rate_scale(values: Sequence[float | None]) -> float:
    """The top of a rate's axis (which starts at 0): its largest value, 1 where it has none above 0."""
    return max((v for v in values if v is not None), default=0.0) or 1.0


def sparklines(detail: JobDetail, height: int = 2) -> Group:
    """Success rate (0–1; blank before enough episodes) and env steps/s (0 to its largest) per row,
    each ``height`` rows high."""
    rows = f" · last {len(detail.env_steps_per_s)} updates"
    success = success_text(detail)
    speed = next((v for v in reversed(detail.env_steps_per_s) if v is not None), None)
    speed_title = f"env steps/s {fmt_num(speed, ',.0f')}"
    return Group(
        Sparkline((success + rows, success), detail.success_rate, 0.0, 1.0, ".1f", height),
        Sparkline((speed_title + rows, speed_title), detail.env_steps_per_s, 0.0,
                  rate_scale(detail.env_steps_per_s), ",.0f", height))


class StatusLine:
    """The top line: an error first (so a narrow terminal still shows it), then where and how fresh.
    Where the line does not fit, whole phrases go, the least telling first (where the GPU figures come
    from, which the notes repeat when it matters; the refresh rate; the job count, which the queue
    shows; the title; the time), never the host, the error or a note; only a line still too long
    after that is cut."""

    def __init__(self, snap: Snapshot, where: str, refresh_s: float):
        self.snap, self.where, self.refresh_s = snap, where, refresh_s

    def parts(self) -> list[tuple[Text, int]]:
        """Each phrase with the order in which it goes where the line is too long (0: never)."""
        snap = self.snap
        parts = [(Text(f"{snap.error} (retrying)", style="bold red"), 0)] if snap.error else []
        parts += [(Text("dvla top"), 4), (Text(snap.host or self.where), 0),
                  (Text(f"GPUs from {snap.gpu_source or '?'}"), 1), (Text(f"{len(snap.jobs)} jobs"), 3),
                  (Text(f"every {self.refresh_s:g} s ({snap.polls_per_s:.1f} Hz)"), 2),
                  (Text(time.strftime("%H:%M:%S")), 5)]
        return parts + [(Text(note, style="yellow"), 0) for note in snap.notes]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        parts = self.parts()
        ranks = sorted({rank for _, rank in parts if rank})
        layouts = [[text for text, rank in parts if not rank or rank > gone] for gone in [0, *ranks]]
        yield widest_fitting(console, options, layouts, lambda kept: Text(" · ", no_wrap=True, overflow="ellipsis")
                             .join(kept))  # type: ignore[arg-type]
