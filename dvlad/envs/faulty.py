"""An env that fails on purpose: the synthetic env, until it crashes, exits, hangs or returns NaN.

Why in the package: tests and ``scripts/chaos.py`` inject these faults into real jobs through a real
dvlad, whose jobs import only what is installed (``env.name = "dvlad.envs.faulty:make"``). Not a
built-in: nobody trains on it.
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np

from dvlad.envs.base import StepResult
from dvlad.envs.synthetic import SyntheticEnv

FAULTS = ("segfault", "exit", "hang", "nan", "build_segfault", "build_exit")
"""What :func:`make`'s env does: crash (SIGSEGV), ``os._exit(3)``, sleep for ever, or return a NaN
reward on step ``after_steps`` (and every step after); or crash or exit while it is being built."""


class FaultyEnv(SyntheticEnv):
    def __init__(self, fault: str, after_steps: int, **args) -> None:
        super().__init__(**args)
        self.fault, self.after_steps, self.steps = fault, after_steps, 0

    def step(self, action: np.ndarray) -> StepResult:
        result = super().step(action)
        self.steps += 1
        if self.steps >= self.after_steps:
            _fail(self.fault)
            if self.fault == "nan":
                result.reward = float("nan")
        return result


def _fail(fault: str) -> None:
    if fault.endswith("segfault"):
        ctypes.string_at(0)  # reads address 0: SIGSEGV, as a crashing simulator dies
    elif fault.endswith("exit"):
        os._exit(3)
    elif fault == "hang":
        while True:
            time.sleep(3600)


def make(fault: str = "segfault", after_steps: int = 1, **args) -> FaultyEnv:
    """The synthetic env (``args`` are its) that does ``fault`` (:data:`FAULTS`) on step ``after_steps``."""
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}, got {fault!r}")
    if fault.startswith("build_"):
        _fail(fault)
    return FaultyEnv(fault, after_steps, **args)
