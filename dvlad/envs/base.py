"""The one environment protocol every simulator speaks.

Why one protocol: the vectorised workers, the shared-memory slots and the policy
head are all sized from an :class:`~dvlad.spaces.EnvSpec`, so a new simulator (reach,
synthetic, LIBERO) plugs in without touching the lanes. The shapes themselves are the
env/policy contract in :mod:`dvlad.spaces`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from dvlad.spaces import EnvSpec


@dataclass
class Observation:
    images: dict[str, np.ndarray]
    """camera name -> uint8 array H×W×3."""
    proprio: np.ndarray
    """float32 vector of length ``EnvSpec.proprio_dim``."""
    instruction: str
    aux: np.ndarray | None = None
    """float32 privileged labels of length ``EnvSpec.aux_dim`` that only a simulator knows
    (e.g. where the named object is). Why: regressing them is a clean perception signal for
    an auxiliary loss while the policy gradient is still noise. Training targets only: the
    lanes never hand them to a policy as input."""


@dataclass
class StepResult:
    obs: Observation
    reward: float
    terminated: bool
    """The task ended (success or failure) inside the episode."""
    truncated: bool
    """The episode hit ``max_episode_steps``."""
    success: bool
    info: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Env(Protocol):
    """A single simulator instance. Construction may be slow; reset and step must not be."""

    spec: EnvSpec

    def reset(self, seed: int | None = None, init_state: int | None = None) -> Observation:
        """Start an episode. ``seed`` draws a random start; ``init_state`` picks a fixed one
        (so GRPO can replay the same start several times). Equal seeds give equal starts."""
        ...

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one 7-float action in [-1, 1]. After ``terminated`` or ``truncated`` the
        caller resets; stepping further is undefined.

        An env whose class sets ``renders_on_demand = True`` also takes ``render=False``: the
        caller will read no image of this step's observation (a step inside an action chunk)
        unless the episode ends on it, so rendering may be skipped."""
        ...

    def close(self) -> None: ...


def start_rng(seed: int | None, init_state: int | None, *, num_init_states: int, tag: int,
              fallback: np.random.Generator) -> np.random.Generator:
    """The random generator that draws an episode's start.

    ``init_state`` (in ``range(num_init_states)``) wins over ``seed`` and always gives the
    same start (seeded by ``[tag, init_state]``, so fixed starts never collide with seeds);
    equal seeds give equal starts; with neither, the env's own ``fallback`` stream goes on.
    """
    if init_state is not None:
        if not 0 <= init_state < num_init_states:
            raise ValueError(f"init_state must be in 0..{num_init_states - 1}, got {init_state}")
        return np.random.default_rng([tag, init_state])
    if seed is not None:
        return np.random.default_rng(seed)
    return fallback
