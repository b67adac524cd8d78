"""The daemon machine's CPU and RAM, as ``/v1/nodes`` reports them beside its CPU slots.

Why sampled here and shared: ``psutil.cpu_percent()`` measures the CPU since its previous call, so
monitors each calling it would each see the few milliseconds since another's request. The daemon
takes one reading at most every :data:`SAMPLE_S` and gives every caller the same, as it does with
NVML's GPU samples.
"""

from __future__ import annotations

import time

import psutil

SAMPLE_S = 0.5


class HostLoad:
    """The machine's CPU busy share over the latest sampling interval, and its memory."""

    def __init__(self, sample_s: float = SAMPLE_S) -> None:
        self.sample_s = sample_s
        psutil.cpu_percent(interval=None)  # the reference the first reading is measured from
        self._since = time.monotonic()
        self._cpu: float | None = None

    def cpu_percent(self) -> float | None:
        """Percent of all the machine's CPUs busy (100 = every core), over the latest interval of at
        least ``sample_s``; None until the first interval has passed."""
        now = time.monotonic()
        if now - self._since >= self.sample_s:
            self._cpu, self._since = psutil.cpu_percent(interval=None), now
        return self._cpu

    def reading(self) -> dict[str, float | int | None]:
        """``cpu_percent``, ``cpu_count`` (logical CPUs), ``ram_used`` and ``ram_total`` (bytes; used is
        what is not available, as ``free`` and htop count it)."""
        memory = psutil.virtual_memory()
        return {"cpu_percent": self.cpu_percent(), "cpu_count": psutil.cpu_count(),
                "ram_used": memory.total - memory.available, "ram_total": memory.total}
