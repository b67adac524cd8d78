"""Durable job records and their events (SQLite in WAL mode): what survives a daemon restart."""

from dvlad.store.db import Job, Queued, Store, Submission
from dvlad.store.states import ACTIVE, TERMINAL, IllegalTransition, State

__all__ = ["ACTIVE", "TERMINAL", "IllegalTransition", "Job", "Queued", "State", "Store", "Submission"]
