"""A job's budget: the limits that stop it, the first of them to hold, and what a resume carries over.

Limits (the reasons of :mod:`dvla.stops`): its env steps (``train.total_env_steps``); the wall clock
from the job's start, set-up included, as Slurm's ``--time`` (``train.max_minutes``); a success rate
held for some updates in a row (``train.stop_at_success``, ``train.stop_after_updates``); and a stop
asked for from outside (SIGTERM, Ctrl-C). The first that holds is the job's stop reason.

What a resume carries over beyond the checkpoint, in ``resume.json`` beside it, written whenever the
learn lane reports a checkpoint: the env steps sampled, the actor's window of finished episodes (so
a resumed job's success rate, and its final numbers, are not those of the few episodes since the
resume), the success streak and the stop reason. Why a file of its own rather than the checkpoint's
metadata: the learn lane writes the checkpoint, and the episodes are the actor's, in another process.
A ``resume.json`` of another version than the checkpoint (the job died between the two) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dvla import metric_names as m
from dvla import stops
from dvla.checkpoint import CHECKPOINT_NAME, metadata
from dvla.errors import InvalidSpec
from dvla.spec import TrainSection
from dvlad.lanes.episodes import EpisodeStats

if TYPE_CHECKING:
    from dvlad.lanes.actor import Actor

RESUME_FILE = "resume.json"


class Budget:
    """The job's limits, checked by the actor between steps (:meth:`check`) and fed every update's
    metric row by the reporter (:meth:`see_row`, for the success streak)."""

    def __init__(self, train: TrainSection, started_at: float) -> None:
        self.total_env_steps = train.total_env_steps
        self.deadline = started_at + 60 * train.max_minutes if train.max_minutes else math.inf
        self.target, self.hold = train.stop_at_success, train.stop_after_updates
        self.streak = 0
        """Updates in a row whose success rate (shown: enough episodes) reached ``target``."""
        self.reason: str | None = None
        """The first limit that held, or the stop asked for; None while the job goes on."""

    def stop(self, reason: str) -> None:
        """Stop for ``reason`` (SIGTERM, Ctrl-C), unless the job is already stopping for another."""
        if self.reason is None:
            self.reason = reason

    @property
    def asked(self) -> bool:
        """The job stops because it was asked to, before its limits."""
        return self.reason in stops.ASKED

    def see_row(self, row: dict[str, float]) -> None:
        """One update's row: extend or break the success streak."""
        success = m.success_rate_of(row)
        held = bool(self.target) and success is not None and success >= self.target
        self.streak = self.streak + 1 if held else 0

    def check(self, env_steps: int) -> str | None:
        """The stop reason once a limit holds (it stays), else None."""
        if self.reason is None:
            if env_steps >= self.total_env_steps:
                self.reason = stops.ENV_STEPS
            elif self.target and self.streak >= self.hold:
                self.reason = stops.SUCCESS_TARGET
            elif time.monotonic() >= self.deadline:
                self.reason = stops.MAX_MINUTES
        return self.reason


@dataclass
class Carried:
    """What ``resume.json`` holds: the job as of the checkpoint of ``version``."""

    version: int
    env_steps: int
    episodes: int
    """Episodes finished in all (the rows' ``episodes``)."""
    returns: list[float] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    """The actor's window of the last finished episodes, oldest first."""
    streak: int = 0
    target: float = 0.0
    """The ``train.stop_at_success`` the streak was counted against."""
    stop_reason: str | None = None

    @classmethod
    def of(cls, env_steps: int, episodes: EpisodeStats, budget: Budget, version: int) -> Carried:
        """The job now: its env steps (all replicas'), the episode window (replica 0's, which the reporter
        merges the others' into), the budget's streak and stop reason."""
        returns, successes, lengths = episodes.window()
        return cls(version, int(env_steps), int(episodes.total), returns, successes, lengths, budget.streak,
                   budget.target, budget.reason)

    def save(self, output_dir: Path) -> None:
        """Write ``resume.json`` atomically (a reader never sees half of it)."""
        path = output_dir / RESUME_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, output_dir: Path) -> Carried | None:
        """The run directory's ``resume.json``; None if there is none or it does not read as one."""
        try:
            data = json.loads((output_dir / RESUME_FILE).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def restore(self, actor: Actor, budget: Budget) -> None:
        """Put the job's env steps (on replica 0, as a resumed job's trained env steps go) and episode
        window back on ``actor``, and the budget's streak."""
        actor.env_steps = self.env_steps
        actor.episodes.restore(self.episodes, self.returns, self.successes, self.lengths)
        if self.target == budget.target:  # a streak towards another target says nothing of this one
            budget.streak = self.streak

    def spent(self, train: TrainSection) -> str | None:
        """The limit that already holds for ``train`` (the job's limits now, perhaps raised since), or
        None if there is budget left. The wall clock starts anew with each run."""
        budget = Budget(train, time.monotonic())
        budget.deadline = math.inf
        if self.target == budget.target:
            budget.streak = self.streak
        return budget.check(self.env_steps)


@dataclass
class ResumePoint:
    """Where a job that resumes starts from: its checkpoint's version, its env steps, and what else
    ``resume.json`` carries (None: no matching one, so the success window starts empty)."""

    version: int
    env_steps: int
    carried: Carried | None

    def spent(self, train: TrainSection) -> str | None:
        """The limit that already holds (:meth:`Carried.spent`), or None: budget left."""
        if self.carried is not None:
            return self.carried.spent(train)
        return stops.ENV_STEPS if self.env_steps >= train.total_env_steps else None


def resume_point(output_dir: Path, resume: bool) -> ResumePoint | None:
    """Where the job in ``output_dir`` resumes from, as the learn lane will (``train.resume`` and a
    checkpoint there), or None when it starts afresh."""
    file = output_dir / CHECKPOINT_NAME
    if not resume or not file.exists():
        return None
    with contextlib.suppress(InvalidSpec, KeyError, ValueError, OSError):
        meta = metadata(file)
        version, trained = int(meta["version"]), int(meta["trained_env_steps"])
        carried = carried_for(output_dir, version)
        return ResumePoint(version, carried.env_steps if carried else trained, carried)
    return None  # not a checkpoint of ours: the learn lane will say so


def carried_for(output_dir: Path, version: int) -> Carried | None:
    """``resume.json`` if it belongs to the checkpoint of ``version``."""
    carried = Carried.load(output_dir)
    return carried if carried is not None and carried.version == version else None
