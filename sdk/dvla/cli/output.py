"""How the CLI prints: rich tables for people, plain JSON for scripts, and the small formats both share
(times, durations, sizes, state colours).

Why one module: every command shows jobs, times and GPUs the same way, so `dvla jobs` and `dvla status`
never disagree on what "runtime" means.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"queued": "yellow", "placing": "yellow", "running": "cyan", "cancelling": "magenta",
               "succeeded": "green", "failed": "bold red", "cancelled": "dim"}
NONE = "-"


PIPED_WIDTH = 1 << 16
"""The width tables are laid out in when stdout is not a terminal: wider than any row, so none is cut."""


def piped() -> bool:
    """stdout is a pipe or a file, not a terminal: what reads it is a program (``grep``, ``awk``, a file
    looked at later), which needs every cell whole, not fitted to a width nobody sees (rich took 80
    columns there: ``dvla nodes | cat`` read ``NO… STA…``, ``dvla jobs > file`` lost its REASON column)."""
    return not sys.stdout.isatty()


def console() -> Console:
    """stdout, coloured only on a terminal (rich decides; ``NO_COLOR`` is honoured); long text lines are
    not wrapped (tables fit the width themselves, or, :func:`piped`, take what they need)."""
    return Console(highlight=False, soft_wrap=True, width=PIPED_WIDTH if piped() else None)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, never coloured or wrapped."""
    click.echo(json.dumps(data, indent=2))


def error(message: str) -> None:
    """One line (or block) for people on stderr, prefixed so it is found in a script's log."""
    click.secho(f"dvla: {message}", err=True, fg="red")  # click drops the colour off a terminal


def note(message: str) -> None:
    """A line for people on stderr that is not an error (stdout stays for what scripts read)."""
    click.echo(f"dvla: {message}", err=True)


def table(*columns: str, title: str | None = None, wrap_last: bool = False, flex_last: bool = False) -> Table:
    """A borderless table like ps/nvidia-smi print. On a terminal cells do not wrap (a long one is cut with
    "…"), except the last column's with ``wrap_last`` (a reason to read in full); with ``flex_last`` the
    last column takes the width the others leave, so it is the one cut on a narrow terminal (a path, a
    reason). :func:`piped`, every cell is printed whole."""
    grid = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False,
                 expand=flex_last and not piped())
    for n, name in enumerate(columns):
        last = n == len(columns) - 1
        wraps = wrap_last and last
        grid.add_column(name, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis",
                        ratio=1 if flex_last and last else None)
    return grid


def state(name: str) -> Text:
    return Text(name, style=STATE_STYLE.get(name, ""))


def when(ts: float | None) -> str:
    """A timestamp in local time, to the second (a day and a time: jobs live hours to days)."""
    return NONE if ts is None else datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def runtime(job: dict[str, Any]) -> str:
    """How long the job ran (or has run so far): from started_at to ended_at or now."""
    if job.get("started_at") is None:
        return NONE
    return duration((job.get("ended_at") or time.time()) - job["started_at"])


def reason(job: dict[str, Any]) -> str:
    """The reason column of a job: why it waits while queued (its pending reason, as squeue's REASON
    shows), else the reason of its last transition (a failure's cause, who cancelled it)."""
    if job["state"] == "queued" and job.get("pending_reason"):
        return f"waiting: {job['pending_reason']}"
    return job.get("reason") or ""


def gib(n: float | None) -> str:
    return NONE if n is None else f"{n / 2**30:.1f}"


def value(v: Any, unit: str = "", fmt: str = "{:.0f}") -> str:
    """A live reading, or "-" where the node cannot measure it (no NVML)."""
    return NONE if v is None else fmt.format(v) + unit
