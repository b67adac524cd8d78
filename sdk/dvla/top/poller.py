"""One poll cycle of ``dvla top``: the three requests it makes and the :class:`Snapshot` they become.

Why a fixed, small cycle: ten monitors refreshing twice a second must not load the daemon. A cycle is
one ``/v1/jobs`` (the newest :data:`JOB_LIMIT` jobs), one ``/v1/gpus`` (the daemon caches NVML samples
for 0.5 s, so monitors share them), one ``/v1/nodes`` (CPU slots, and the machine's CPU, sampled as
sparingly, and RAM) and ``/v1/jobs/ID/metrics?last=60`` for the selected job only: never a request per
listed job. A daemon that stops answering does not end the monitor: the last good data
stays on screen with ``daemon unreachable: <where>``, and the next cycle tries again.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Any

from dvla.client import Client
from dvla.errors import DaemonUnavailable, DvlaError, PermissionDenied
from dvla.top.snapshot import Snapshot, build, pick_selected

MIN_REFRESH_S = 0.05
"""The shortest refresh either entry point (``dvla top``, ``python -m dvla.top``) takes: faster would
only load the daemon, which samples NVML every 0.5 s anyway."""

JOB_LIMIT = 200
"""The queue shows the newest 200 jobs: enough for a shared server, bounded work for the daemon."""
METRICS_LAST = 60
"""Rows of the selected job's metrics per cycle: the sparklines' width and the latest lane figures."""


class RateMeter:
    """Polls per second over the last ``window_s`` seconds: shown in the status line, so a person (and
    the CPU benchmark, reading the screen) sees the refresh rate a monitor really gets."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self.times: deque[float] = deque()

    def tick(self, now: float) -> float:
        """Record a poll at ``now`` (monotonic seconds); return the rate, 0 until two polls are seen."""
        self.times.append(now)
        while now - self.times[0] > self.window_s:
            self.times.popleft()
        span = now - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


class Poller:
    """Asks one daemon for a :class:`Snapshot`. Not thread-safe: one thread polls (the client is)."""

    def __init__(self, client: Client):
        self.client = client
        self.see_all = True
        """Everyone's jobs, as htop shows every process; dropped after the daemon refuses it (a plain
        user where ``users_see_all`` is off), so the refusal costs one request, not one per cycle."""
        self.last = Snapshot()
        self.rate = RateMeter()

    def _jobs(self) -> list[dict[str, Any]]:
        if self.see_all:
            try:
                return self.client.jobs(all=True, limit=JOB_LIMIT)
            except PermissionDenied:
                self.see_all = False
        return self.client.jobs(limit=JOB_LIMIT)

    def poll(self, selected: int | None) -> Snapshot:
        """The screen's data now, for job ``selected`` (or the default choice of :func:`pick_selected`).
        Never raises for the daemon's sake: failures come back as the previous data with ``error`` set."""
        try:
            jobs = self._jobs()
            gpus = self.client.gpus()
            nodes = self.client.nodes()
            chosen = pick_selected(jobs, selected)
            rows = self.client.metrics(chosen, last=METRICS_LAST) if chosen is not None else []
        except DaemonUnavailable as exc:
            return self._stale(f"daemon unreachable: {exc.where}")
        except DvlaError as exc:  # a dropped connection, a job removed between two requests: retry next cycle
            return self._stale(f"daemon error: {exc}")
        snap = build(jobs, gpus, chosen, rows, time.time(), nodes)
        self.last = dataclasses.replace(snap, polls_per_s=self.rate.tick(time.monotonic()))
        return self.last

    def _stale(self, error: str) -> Snapshot:
        return dataclasses.replace(self.last, error=error)
