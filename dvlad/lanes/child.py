"""What each child process of a job (env worker, learner rank, actor replica) does first.

Why ignore SIGINT and SIGTERM there: both reach the job's whole process group (Ctrl-C at a terminal,
dvlad's cancel and ``timeout`` signal the group), and the job's main process is the one that stops
well: it finishes the update in hand, checkpoints, then shuts its lanes down. A child that died of
the signal first would take the final checkpoint with it and make a stop look like a crash. A child
whose main process is gone still ends: env workers at the end of their pipe, learners when their
parent changes, and dvlad's SIGKILL to the group after the grace period.
"""

from __future__ import annotations

import signal

from dvlad.proctitle import name_this_process


def become_lane(name: str) -> None:
    """Name this process for ``ps`` and leave stopping to the job's main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    name_this_process(name)
