"""A user env factory whose ``close`` leaves a mark: one line per closed env in the file ``closed``."""

from __future__ import annotations

from pathlib import Path

from dvlad.envs.synthetic import SyntheticEnv


class _Closing(SyntheticEnv):
    def __init__(self, closed: str, env_index: int, **args) -> None:
        super().__init__(**args)
        self.closed, self.env_index = Path(closed), env_index

    def close(self) -> None:
        with self.closed.open("a") as f:
            f.write(f"{self.env_index}\n")


def make(closed: str, env_index: int = 0, **args) -> SyntheticEnv:
    return _Closing(closed, env_index, **args)
