"""A child process's stderr, passed through to this process's and its last lines kept.

Why: an env worker that dies of a signal or ``os._exit`` while building or stepping sends no message
(it cannot); what it printed (a simulator's error, faulthandler's dump of the Python stack it crashed
in) is the only account of why, and the job's one-line reason should carry it, not just ``EOFError``.
The output still reaches the job's log (this process's stderr) as it did.
"""

from __future__ import annotations

import contextlib
import os
import sysconfig
import threading
from collections import deque
from multiprocessing.connection import Connection

_STDLIB = sysconfig.get_paths()["stdlib"]
"""Frames in here (ctypes, multiprocessing) are not where an env crashed: the innermost other one is."""
KEPT_LINES = 40
SUMMARY_CHARS = 300


class StderrTail:
    """The reading end, in the parent, of a pipe a child makes its fd 2 (:func:`redirect_stderr`)."""

    def __init__(self, ctx) -> None:
        self._reader, self.writer = ctx.Pipe(duplex=False)
        self._lines: deque[str] = deque(maxlen=KEPT_LINES)
        self._thread = threading.Thread(target=self._pump, name="dvla-env-stderr", daemon=True)

    def started(self) -> None:
        """Call once the child has started: the parent's copy of the writing end is closed (so the pipe
        ends with the child) and the pump begins."""
        self.writer.close()
        self._thread.start()

    def _pump(self) -> None:
        fd, partial = self._reader.fileno(), b""
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 1 << 16):
                view = memoryview(chunk)
                while view:  # through to our stderr, as if the child wrote there itself
                    view = view[os.write(2, view):]
                *complete, partial = (partial + chunk).split(b"\n")
                self._lines.extend(line.decode(errors="replace").rstrip() for line in complete)
        if partial:
            self._lines.append(partial.decode(errors="replace").rstrip())
        self._reader.close()

    def summary(self, wait_s: float = 1.0) -> str:
        """What the child's last output says, in one line: faulthandler's fatal error and the innermost
        frame outside the standard library, or the last three lines; empty if it printed nothing."""
        self._thread.join(timeout=wait_s)  # the child has ended: the rest of its output is on its way
        lines = [line for line in list(self._lines) if line.strip()]
        fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
        if fatal is not None:
            frames = [line.strip() for line in lines[fatal:] if line.strip().startswith("File ")]
            frame = next((f for f in frames if not f.startswith(f'File "{_STDLIB}')), frames[0] if frames else "")
            text = f"{lines[fatal]}" + (f", in {frame}" if frame else "")
        else:
            text = " / ".join(line.strip() for line in lines[-3:])
        return text[:SUMMARY_CHARS]


def redirect_stderr(writer: Connection) -> None:
    """In the child: send fd 2 (Python's, C's, faulthandler's) into ``writer``'s pipe."""
    os.dup2(writer.fileno(), 2)
    writer.close()
