"""Reading what a job writes (its log, its metrics.jsonl) without importing the engine (torch).

Why every read goes through :func:`open_job_file`: the daemon runs as root, and a job's ``run/``
directory belongs to the job's user, who may put anything there: a symlink to ``/etc/shadow``
(root would read it and hand it out as a checkpoint or a log), a FIFO (an ``open`` that never
returns, on the event loop), a device. So these files are opened without following a final
symlink, without blocking, and accepted only if regular. The directories above them are the
daemon's (``launch.spawn``), so the user cannot swap them.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

BLOCK = 64 * 1024
"""Bytes read per step when reading a file's tail backwards."""
ROW_MAX = 64 * 1024
"""The longest metrics row looked for (a job's rows are about 1 KiB): a tail read reads at most this
much per row it is asked for."""


def open_job_file(path: Path) -> BinaryIO:
    """Open a file a job's user controls, for reading: never through a symlink, only a regular file.

    Raises OSError (``ELOOP`` for a symlink, ``EINVAL`` for a FIFO, device or directory), like a
    missing file does, so callers treat all of them as "nothing readable there"."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_job_file(path: Path, offset: int = 0, limit: int = -1) -> bytes:
    """At most ``limit`` bytes (all if negative) of a job's file from ``offset``, through
    :func:`open_job_file`; nothing if it does not exist (yet)."""
    try:
        with open_job_file(path) as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


def _tail_lines(f: BinaryIO, count: int) -> list[bytes]:
    """The last ``count`` complete lines (and a torn final one), reading backwards a block at a time,
    never more than :data:`ROW_MAX` bytes a line asked for.

    Why not a fixed generous tail: ``dvla top`` asks for the last 60 rows twice a second per monitor;
    reading only what those rows take keeps that cheap however long the job's metrics file grows. Why
    the bound: ``/metrics`` and ``/v1/gpus`` read the last row on dvlad's event loop, and a job's user
    may write gigabytes without a newline there (without it every client waited while it was read)."""
    end = f.seek(0, 2)
    floor = max(0, end - count * ROW_MAX)
    start, blocks, newlines = end, [], 0
    while start > floor and newlines <= count:
        size = min(BLOCK, start - floor)
        start -= size
        f.seek(start)
        blocks.append(f.read(size))
        newlines += blocks[-1].count(b"\n")
    lines = b"".join(reversed(blocks)).splitlines()
    return lines if start == 0 else lines[1:]  # the first line of a mid-file read may be cut


def metrics_rows(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (the last ``last`` only, if given); a torn final line is skipped."""
    try:
        with open_job_file(path) as f:
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
