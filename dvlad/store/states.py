"""A job's states and the only transitions allowed between them.

Why explicit: the daemon is restarted, killed and raced by cancels; a table of legal moves turns a
logic error (cancelling a finished job, starting a cancelled one) into a refusal instead of a lie
in the store.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    PLACING = "placing"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.PLACING, State.CANCELLED}),
    # placing: GPUs chosen, process being started; a failed start or a daemon crash here fails it
    State.PLACING: frozenset({State.RUNNING, State.FAILED, State.CANCELLED}),
    State.RUNNING: frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLING}),
    # cancelling: SIGTERM sent; the job may still finish on its own before it stops
    State.CANCELLING: frozenset({State.CANCELLED, State.SUCCEEDED, State.FAILED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}

TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
ACTIVE = frozenset({State.PLACING, State.RUNNING, State.CANCELLING})
"""States that hold GPUs and CPU slots."""


class IllegalTransition(Exception):
    """A move the table forbids; ``current`` is the state the job is really in."""

    def __init__(self, job_id: int, current: State, wanted: State):
        self.job_id, self.current, self.wanted = job_id, current, wanted
        super().__init__(f"job {job_id} is {current}, cannot become {wanted}")
