"""What each child process of a job (env worker, learner rank, actor replica) does first, and how it
is started.

Why ignore SIGINT and SIGTERM there: both reach the job's whole process group (Ctrl-C at a terminal,
dvlad's cancel and ``timeout`` signal the group), and the job's main process is the one that stops
well: it finishes the update in hand, checkpoints, then shuts its lanes down. A child that died of
the signal first would take the final checkpoint with it and make a stop look like a crash. A child
whose main process is gone still ends: env workers at the end of their pipe, learners when their
parent changes, and dvlad's SIGKILL to the group after the grace period.

Why start them with both signals blocked (:func:`start_lane`): a spawned child spends its first
seconds importing (torch) before it can ignore them, and a stop asked for then killed it: a job
cancelled during set-up failed with ``learner (pid N) killed by signal SIGTERM before it was ready``.
The blocked mask is inherited across fork and exec, so the signal waits until :func:`become_lane`
ignores it, which discards it (multiprocessing starts its resource tracker the same way).
"""

from __future__ import annotations

import signal
import threading
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess

from dvlad.proctitle import name_this_process

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
"""What asks a job to stop; its main process alone handles them."""


def start_lane(lane: BaseProcess | threading.Thread) -> None:
    """Start ``lane`` with :data:`STOP_SIGNALS` blocked in it from its first instruction (a thread
    inherits the mask too: the main thread, which handles them, then receives them alone).

    The resource tracker is started first: starting itself inside ``Process.start``, it would unblock
    both signals before the child is spawned. A stop signal that comes while ``start`` runs is held
    and handled once it returns: the mask covers only this thread, and a signal another thread takes
    (a stderr pump, torch's) still raises in the main thread at its next instruction, which could be
    between spawning the child and writing it what to run (the child then died reading nothing:
    ``EOFError: Ran out of input``, on a Ctrl-C while workers were being started)."""
    if isinstance(lane, BaseProcess):
        resource_tracker.ensure_running()
    held: list[int] = []
    handlers = ({s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in STOP_SIGNALS}
                if threading.current_thread() is threading.main_thread() else {})
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        lane.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in held:
            signal.raise_signal(signum)  # now, to the handler the process had


def become_lane(name: str) -> None:
    """Name this process for ``ps`` and leave stopping to the job's main process: the stop signals
    are ignored, and any that came while they were blocked is discarded."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    name_this_process(name)
