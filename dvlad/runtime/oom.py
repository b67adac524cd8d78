"""Whether the kernel's OOM killer killed a job: its cgroup's ``oom_kill`` counter, or the kernel log.

Why: a job killed for memory only showed ``killed by signal SIGKILL``, which reads like a person's
``kill -9``. Only evidence counts (never a guess from the signal alone): the ``oom_kill`` counter of
the job's cgroup (``memory.events``; v1's ``memory.oom_control``) rising while it ran, or a kernel
record (``/dev/kmsg``, what ``dmesg`` reads; root, or ``kernel.dmesg_restrict = 0``) of one of its
pids being killed.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
KMSG = "/dev/kmsg"
KMSG_RECORDS_MAX = 100_000
"""Records of the kernel log read at most (its ring buffer holds a few thousand)."""
_KILLED = re.compile(r"(?:Out of memory|Memory cgroup out of memory): Killed process (\d+)\b|oom-kill:.*\bpid=(\d+)\b")


def cgroup_of(pid: int) -> Path | None:
    """The memory cgroup directory ``pid`` runs in: cgroup v1's memory controller where it is mounted
    (hybrid hosts), else the v2 (unified) one; None if ``pid`` is gone."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / path.lstrip("/")
    return next((CGROUP_ROOT / line[3:].lstrip("/") for line in lines if line.startswith("0::")), None)


def oom_kills(cgroup: Path | None) -> int | None:
    """The ``oom_kill`` counter of ``cgroup`` (v2: ``memory.events``, v1: ``memory.oom_control``), or None."""
    if cgroup is None:
        return None
    for name in ("memory.events", "memory.oom_control"):
        try:
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def killed_pids(records: Iterable[str]) -> set[int]:
    """The pids that kernel log ``records`` say the OOM killer killed."""
    pids = set()
    for record in records:
        match = _KILLED.search(record)
        if match:
            pids.add(int(match[1] or match[2]))
    return pids


def kernel_records() -> list[str]:
    """The kernel log's records now, or none where it cannot be read."""
    records: list[str] = []
    with contextlib.suppress(OSError):
        fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
        try:
            while len(records) < KMSG_RECORDS_MAX:
                try:
                    records.append(os.read(fd, 8192).decode(errors="replace"))
                except BlockingIOError:  # the end of the buffer
                    break
                except BrokenPipeError:  # a record overwritten while reading: read on
                    continue
        finally:
            os.close(fd)
    return records


def oom_killed(pids: set[int], cgroup: Path | None, kills_before: int | None) -> bool:
    """True where there is evidence that the OOM killer killed one of ``pids`` (or, in the job's own
    cgroup, any of its processes: the counter rose from ``kills_before``)."""
    now = oom_kills(cgroup)
    if now is not None and kills_before is not None and now > kills_before:
        return True
    return bool(pids & killed_pids(kernel_records()))
