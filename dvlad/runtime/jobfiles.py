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
