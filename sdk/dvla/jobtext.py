"""How a job record's fields read for people, shared by ``dvla jobs``, ``dvla status`` and ``dvla top``.

Why one place: a job on GPU 0 once showed as ``0`` in a GPUs column, which reads as "no GPUs", and
each screen spelled it its own way. Every client now says where a job is placed the same way:
``GPU 0``, ``GPUs 0,1``; a queued job how many it asks for (``2 asked``); a job without GPUs ``CPU``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WAITING = frozenset({"queued", "placing"})
"""States of a job not yet placed on its GPUs."""


def gpu_indices(indices: list[int]) -> str:
    """``GPU 0`` or ``GPUs 0,1``."""
    return ("GPU " if len(indices) == 1 else "GPUs ") + ",".join(str(i) for i in indices)


def gpus_column(job: Mapping[str, Any]) -> str:
    """A job's GPUs in a table of jobs: the GPUs it holds or held (``GPU 0``), else how many it asks
    for (``2 asked``), or ``CPU`` for a job that asks for none."""
    held = list(job.get("gpu_ids") or [])
    if held:
        return gpu_indices(held)
    asked = int(job.get("gpus") or 0)
    return f"{asked} asked" if asked else "CPU"


def gpus_sentence(job: Mapping[str, Any]) -> str:
    """A job's GPUs as ``dvla status`` says them: ``1 asked, placed on GPU 0``."""
    asked, held = int(job.get("gpus") or 0), list(job.get("gpu_ids") or [])
    if not asked and not held:
        return "none (runs on the CPU)"
    if held:
        return f"{asked} asked, placed on {gpu_indices(held)}"
    return f"{asked} asked, " + ("not placed yet" if job.get("state") in WAITING else "never placed")
