"""Naming a job's processes for ``ps``, ``top`` and ``/proc/PID/comm``.

Why: every process of a job is ``python``; a person (or ``scripts/chaos.py``) looking for the job's
learner or one of its env workers needs to tell them apart.
"""

from __future__ import annotations

import contextlib


def name_this_process(name: str) -> None:
    """Set this process's name as ``ps -o comm`` shows it (at most 15 bytes on Linux; elsewhere, nothing)."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name[:15])
