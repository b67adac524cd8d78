"""A user env factory that takes ``env_index``: its instruction names the index it was built with."""

from __future__ import annotations

from dvlad.envs.base import Observation
from dvlad.envs.synthetic import SyntheticEnv


class _Indexed(SyntheticEnv):
    def __init__(self, env_index: int, **args) -> None:
        super().__init__(**args)
        self.env_index = env_index

    def _observe(self) -> Observation:
        obs = super()._observe()
        obs.instruction = f"env index {self.env_index}"
        return obs


def make(env_index: int = 0, **args) -> SyntheticEnv:
    return _Indexed(env_index, **args)
