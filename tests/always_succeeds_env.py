"""A user env factory whose every episode succeeds at step ``success_step``, whatever the policy does: a
success rate of 1.00 from the first episode on, for the success target and for how early windows show."""

from __future__ import annotations

import numpy as np

from dvlad.envs.base import StepResult
from dvlad.envs.synthetic import SyntheticEnv


class _Succeeds(SyntheticEnv):
    def __init__(self, success_step: int = 12, **args) -> None:
        super().__init__(**args)
        self.success_step = success_step

    def step(self, action: np.ndarray) -> StepResult:
        result = super().step(action)
        if self._step >= self.success_step:
            result.success, result.terminated, result.truncated = True, True, False
        return result


def make(success_step: int = 12, **args) -> SyntheticEnv:
    return _Succeeds(success_step, **args)
