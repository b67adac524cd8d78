"""An evaluation's progress on stderr: episodes done of all, success so far, elapsed time and ETA.

Why two forms: on a terminal a live bar (rich, the CLI's own library) redrawn in place; into a file
or a pipe (a job log, CI) a bar would be one line of control codes, so a plain line instead, at
most every ``every_s`` seconds and once at the end. stdout stays the result's (and ``--json``'s).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class EvalProgress:
    """Told of each finished episode (:meth:`episode`); :meth:`close` when the evaluation ends.
    ``enabled`` False: silent (``--no-progress``)."""

    def __init__(self, total: int, stream: TextIO | None = None, every_s: float = 10.0, enabled: bool = True) -> None:
        self.total, self.every_s, self.enabled = total, every_s, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = self.successes = self._shown = 0
        self.t0 = self._last = time.monotonic()
        self._bar: Progress | None = None
        if enabled and self.stream.isatty():
            self._bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("episodes, success {task.fields[success]}"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task("eval", total=total, success="-")
            self._bar.start()

    def _success(self) -> str:
        return f"{self.successes / self.done:.3f}" if self.done else "-"

    def line(self) -> str:
        """The plain form: ``12/40 episodes, success 0.250, 1:03 elapsed, ETA 2:27``."""
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        return (f"evaluating: {self.done}/{self.total} episodes, success {self._success()}, "
                f"{_clock(elapsed)} elapsed, ETA {_clock(eta) if eta is not None else '?'}")

    def episode(self, success: bool) -> None:
        self.done += 1
        self.successes += int(success)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, success=self._success())
        elif self.enabled and time.monotonic() - self._last >= self.every_s:
            self._print()

    def _print(self) -> None:
        self._last, self._shown = time.monotonic(), self.done
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the bar, or print the last line unless it is already printed."""
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and (self._shown != self.done or not self.done):
            self._print()
