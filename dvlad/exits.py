"""How a process ended, in words that a job's reason can carry.

Why one place: the daemon says how a job's process ended and the job says how one of its env
workers or lanes ended; both must name any signal a process can die of without raising.
"""

from __future__ import annotations

import signal


def signal_name(number: int) -> str:
    """``SIGKILL``, ``SIGRTMIN+5`` or ``signal 70``: any number a process can die of, without raising.

    Why not ``signal.Signals(n).name`` alone: it knows no real-time signal but SIGRTMIN and SIGRTMAX,
    and the ValueError it raised once stopped the supervisor, so no job ever finished again."""
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN < number < signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"signal {number}"


def how_it_ended(exit_code: int | None) -> str:
    """``killed by signal SIGSEGV``, ``exited with status 3``, or (None: still running or unknown)
    ``ended without an exit status``, as :attr:`multiprocessing.Process.exitcode` gives it."""
    if exit_code is None:
        return "ended without an exit status"
    if exit_code < 0:
        return f"killed by signal {signal_name(-exit_code)}"
    return f"exited with status {exit_code}"
