"""Rich renderables for ``dvla top``'s panels, each made from :mod:`dvla.top.snapshot` data alone.

Why separate from the widgets: drawing a GPU row or a lane row is a pure function of a snapshot, so it
is checked without a terminal, and the textual widgets only place these on screen. Bars use distinct
block characters per part (weight █, activation ▓, other ▒, free ░) so they read without colour too,
as in a pane capture or over a plain ssh terminal.
"""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text

from dvla.top.snapshot import GpuView, JobDetail, Snapshot, fmt_bytes, fmt_num

BAR = 20
"""Width of the utilisation and memory bars, in cells."""
FREE = ("░", "grey35")


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


def util_cell(gpu: GpuView) -> Text:
    if gpu.utilization is None:
        return Text("–")
    style = "red" if gpu.utilization >= 90 else "yellow" if gpu.utilization >= 50 else "green"
    return bar([(gpu.utilization, "█", style)], 100.0).append(f" {gpu.utilization:3.0f}%")


def memory_cell(gpu: GpuView) -> Text:
    total = gpu.memory_total or 0
    shown = f" {fmt_bytes(gpu.memory_used)}/{fmt_bytes(gpu.memory_total)}"
    if gpu.memory_used is None:
        return Text(shown.strip())
    if gpu.pools is None:
        return bar([(gpu.memory_used, "█", "green")], total).append(shown)
    p = gpu.pools
    return bar([(p.weight, "█", "magenta"), (p.activation, "▓", "cyan"), (p.other, "▒", "yellow")],
               total).append(shown)


def pools_cell(gpu: GpuView) -> str:
    if gpu.pools is None:
        return "pools n/a"
    p = gpu.pools
    return f"weight {fmt_bytes(p.weight)} · act {fmt_bytes(p.activation)} · other {fmt_bytes(p.other)}"


def gpu_table(snap: Snapshot) -> Table:
    """One row per GPU; an empty table when there are none (the notes say so)."""
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    for name in ("GPU", "name", "util", "memory (█ weight ▓ act ▒ other)", "pools", "temp", "power", "job"):
        table.add_column(name, no_wrap=True)
    for g in snap.gpus:
        power = f"{fmt_num(g.power_draw, '.0f')}/{fmt_num(g.power_limit, '.0f')} W"
        table.add_row(str(g.index), g.name, util_cell(g), memory_cell(g), pools_cell(g),
                      fmt_num(g.temperature, ".0f", "°C"), power, g.holder or "–")
    return table


def lanes_table(detail: JobDetail) -> Table:
    """The four lanes: throughput and busy share over the job's last update window."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("lane", no_wrap=True)
    table.add_column("items/s", justify="right", no_wrap=True)
    table.add_column("busy", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for lane in detail.lanes:
        busy = bar([(min(lane.busy, 1.0), "█", "cyan")], 1.0, 10) if lane.busy is not None else Text("")
        table.add_row(lane.name, fmt_num(lane.items_per_s, ",.1f"),
                      fmt_num(None if lane.busy is None else 100 * lane.busy, ".0f", "%"), busy)
    return table


def pipeline_line(detail: JobDetail) -> str:
    """Queue depth, staleness and progress of the selected job, in one line under its lanes."""
    return (f"queue depth {fmt_num(detail.queue_depth, '.0f')} · staleness mean {fmt_num(detail.staleness_mean, '.2f')}"
            f" max {fmt_num(detail.staleness_max, '.0f')} · version {fmt_num(detail.version, '.0f')}"
            f" · env steps {fmt_num(detail.env_steps, ',.0f')}")


def status_line(snap: Snapshot, where: str, refresh_s: float) -> Text:
    """The top line: an error first (so a narrow terminal still shows it), then where and how fresh."""
    text = Text()
    if snap.error:
        text.append(f"{snap.error} (retrying) · ", style="bold red")
    text.append(f"dvla top · {snap.host or where} · GPUs from {snap.gpu_source or '?'} · {len(snap.jobs)} jobs"
                f" · every {refresh_s:g} s ({snap.polls_per_s:.1f} Hz) · {time.strftime('%H:%M:%S')}")
    for note in snap.notes:
        text.append(f" · {note}", style="yellow")
    return text
