"""The contract between simulators and policies: observation and action spaces.

Why a module of its own: envs and policies must know nothing of each other (a simulator never
imports a model, a model never imports a simulator), yet both are sized from the same shapes.
Both import them from here. Actions are always 7 floats in [-1, 1] (delta position, delta
rotation, gripper), as LIBERO uses, so one policy head fits every env.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

ACTION_DIM = 7
"""delta x, y, z, delta roll, pitch, yaw, gripper (−1 open … +1 closed)."""

MAX_INSTRUCTION_BYTES = 96
"""Instructions travel through shared memory as zero-padded UTF-8 of this many bytes."""


@dataclass(frozen=True)
class EnvSpec:
    """Static shape of an env: what the workers allocate and the policy is built for."""

    cameras: dict[str, tuple[int, int]]
    """camera name -> (height, width); images are uint8 H×W×3."""
    proprio_dim: int
    max_episode_steps: int
    num_init_states: int = 0
    """Fixed start states the env can reset to by index (0: seeds only)."""
    aux_dim: int = 0
    """Length of :attr:`Observation.aux` (0: the env offers no auxiliary labels)."""


IMAGE_PREFIX = "image/"
"""Arrays of camera images are named ``image/CAMERA`` wherever observations travel as named arrays
(env slots, trajectory segments, a learner's batch), beside ``proprio``, ``instruction`` and ``aux``."""

T = TypeVar("T")


def image_key(camera: str) -> str:
    """The array name of ``camera``'s images."""
    return IMAGE_PREFIX + camera


def camera_images(arrays: Mapping[str, T]) -> dict[str, T]:
    """camera -> its images, out of a table of named arrays."""
    return {name[len(IMAGE_PREFIX):]: value for name, value in arrays.items() if name.startswith(IMAGE_PREFIX)}
