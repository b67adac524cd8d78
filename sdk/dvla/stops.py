"""Why a job stopped: the ``stop_reason`` of its ``summary.json``, and the sentence that says it.

Why a module of its own, in the client: the job runner records the reason (``dvlad/runtime/job.py``),
prints it on its final line, and the daemon turns it into the job's reason that ``dvla status`` and
``dvla jobs`` show (``dvlad/runtime/supervisor.py``); one sentence for one reason everywhere. A job
stopped by a limit it was given (its env-step budget, ``train.max_minutes``, its success target) has
status ``succeeded``; one stopped on request (SIGTERM, Ctrl-C) has status ``stopped``, and resumes when
run again. Standard library only.
"""

from __future__ import annotations

import math
from typing import Any

from dvla import metric_names as m

ENV_STEPS = "env_steps"
"""``train.total_env_steps`` env steps were sampled."""
MAX_MINUTES = "max_minutes"
"""``train.max_minutes`` of wall clock passed since the job started (set-up included)."""
SUCCESS_TARGET = "success target"
"""The success rate held ``train.stop_at_success`` for ``train.stop_after_updates`` updates."""
SIGTERM = "stopped (SIGTERM)"
"""SIGTERM asked the job to stop (``dvla cancel``, systemd, Slurm, ``kill``)."""
INTERRUPTED = "interrupted (Ctrl-C)"
"""SIGINT asked the job to stop: Ctrl-C in its terminal."""

LIMITS = (ENV_STEPS, MAX_MINUTES, SUCCESS_TARGET)
"""Limits the job was given: it stops having done what it was asked (status ``succeeded``)."""
ASKED = (SIGTERM, INTERRUPTED)
"""Stops asked for from outside: it checkpoints and stops early (status ``stopped``)."""
STOP_REASONS = LIMITS + ASKED
TOTAL_ENV_STEPS = "total_env_steps"
"""The summary's key for the budget (``train.total_env_steps``) beside its ``env_steps`` done."""

_SAID = {
    ENV_STEPS: "completed its env-step budget",
    MAX_MINUTES: "reached its wall-clock limit (train.max_minutes)",
    SUCCESS_TARGET: "reached its success target (train.stop_at_success)",
    SIGTERM: "stopped by SIGTERM",
    INTERRUPTED: "interrupted by Ctrl-C",
}


def _count(value: Any) -> int | None:
    """A count from a summary a user may have written anything into."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def progress(summary: dict[str, Any]) -> str:
    """How far the budget got: "640 of 640 env steps" (or "640 env steps"; "" if the summary says nothing)."""
    done, total = _count(summary.get(m.ENV_STEPS)), _count(summary.get(TOTAL_ENV_STEPS))
    if done is None:
        return ""
    return f"{done:,} of {total:,} env steps" if total is not None else f"{done:,} env steps"


def describe(summary: dict[str, Any]) -> str:
    """What stopped the job and how far its budget got, from its ``summary.json``: "completed its
    env-step budget: 640 of 640 env steps". A summary without a known ``stop_reason`` (written by an
    older runner, or by hand) says only that the job succeeded or stopped."""
    reason = summary.get("stop_reason")
    if reason not in _SAID:
        return "stopped" if summary.get("status") == "stopped" else "succeeded"
    said = _SAID[reason]
    if summary.get("during_setup") is True:  # a wall-clock limit set-up alone spent, or a stop asked for then
        said += " during set-up"
    got = progress(summary)
    return f"{said}: {got}" if got else said
