"""How late the daemon's event loop runs: a timer's delay, sampled all the time.

Why: every request, the job supervisor and the scheduler share one event loop; anything that holds
it (a long computation, a slow read) delays every client at once. A timer that asks to wake after
``INTERVAL_S`` and wakes later measures that delay directly, whatever caused it. ``/metrics`` shows the
longest of the last ``WINDOW_S`` (``dvlad_event_loop_lag_max_seconds``; Prometheus's usual scrape
interval, so consecutive scrapes see every sample), and ``scripts/bench_daemon.py`` reads it at the
end of its scheduling measurement.
"""

from __future__ import annotations

import asyncio
from collections import deque

INTERVAL_S = 0.05
WINDOW_S = 15.0


class LoopLag:
    """The delays of a repeating ``INTERVAL_S`` timer over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self._lags: deque[float] = deque(maxlen=max(1, int(window_s / INTERVAL_S)))

    def worst(self) -> float:
        """The longest delay of the window, in seconds (0 before the first sample)."""
        return max(self._lags, default=0.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + INTERVAL_S
            await asyncio.sleep(INTERVAL_S)
            self._lags.append(max(0.0, loop.time() - asked))
