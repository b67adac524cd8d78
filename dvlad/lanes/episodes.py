"""Finished episodes and the rolling statistics the job reports: success rate, return, length."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from dvla import metric_names as m

Episode = tuple[float, bool, int]
"""(return, success, length) of one finished episode."""


class EpisodeStats:
    """Finished episodes, kept for the rolling success rate, return and length.

    Why whole rollouts in episodic (GRPO) mode: every episode of a rollout starts together, and
    the successful ones end first. Recorded as they end, a window smaller than a rollout holds
    only its last, timed-out episodes (128 envs per group read 0% success where 7% succeeded).
    :meth:`add_rollout` records a rollout in env order once all of it has ended, and the window
    is at least one rollout long.
    """

    def __init__(self, window: int = 100, keep_new: bool = False) -> None:
        self.returns: deque[float] = deque(maxlen=window)
        self.successes: deque[float] = deque(maxlen=window)
        self.lengths: deque[int] = deque(maxlen=window)
        self.total = 0
        self._new: list[Episode] | None = [] if keep_new else None
        self._lock = threading.Lock()  # the actor adds while the reporter reads

    def add(self, ret: float, success: bool, length: int) -> None:
        with self._lock:
            self.returns.append(ret)
            self.successes.append(float(success))
            self.lengths.append(length)
            self.total += 1
            if self._new is not None:
                self._new.append((ret, success, length))

    def take_new(self) -> list[Episode]:
        """The episodes added since the last call (``keep_new``: a replica process sends them on)."""
        with self._lock:
            new, self._new = self._new or [], []
        return new

    def add_rollout(self, ended: dict[int, Episode]) -> None:
        """A rollout's episodes, ``{env: (return, success, length)}``, in env order."""
        for env in sorted(ended):
            self.add(*ended[env])

    def window(self) -> tuple[list[float], list[float], list[int]]:
        """The window's returns, successes and lengths, oldest first, copied at one instant."""
        with self._lock:
            return list(self.returns), list(self.successes), list(self.lengths)

    def restore(self, total: int, returns: list[float], successes: list[float], lengths: list[int]) -> None:
        """Start from a window saved by :meth:`window` (a resumed job's) and its count of episodes."""
        with self._lock:
            self.returns.extend(returns)
            self.successes.extend(successes)
            self.lengths.extend(lengths)
            self.total = total

    def summary(self) -> dict[str, float]:
        with self._lock:
            if not self.returns:
                return {m.EPISODES: self.total}
            return {m.EPISODES: self.total, m.SUCCESS_RATE: float(np.mean(self.successes)),
                    m.EPISODE_RETURN: float(np.mean(self.returns)),
                    m.EPISODE_LENGTH: float(np.mean(self.lengths))}
