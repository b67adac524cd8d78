"""Reading what a job writes (its log, its metrics.jsonl) without importing the engine (torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

BLOCK = 64 * 1024
"""Bytes read per step when reading a file's tail backwards."""


def _tail_lines(f: BinaryIO, count: int) -> list[bytes]:
    """The last ``count`` complete lines (and a torn final one), reading backwards a block at a time.

    Why not a fixed generous tail: ``dvla top`` asks for the last 60 rows twice a second per monitor;
    reading only what those rows take keeps that cheap however long the job's metrics file grows."""
    end = f.seek(0, 2)
    start, data = end, b""
    while start > 0 and data.count(b"\n") <= count:
        start = max(0, start - BLOCK)
        f.seek(start)
        data = f.read(end - start)
    lines = data.splitlines()
    return lines if start == 0 else lines[1:]  # the first line of a mid-file read may be cut


def metrics_rows(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (the last ``last`` only, if given); a torn final line is skipped."""
    try:
        with path.open("rb") as f:
            lines = _tail_lines(f, last) if last is not None else f.read().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # partial line being written, or the cut of the tail seek
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows[-last:] if last is not None else rows
