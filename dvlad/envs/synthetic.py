"""A simulator cost model without a simulator.

Why: to measure and test the engine (lanes, shared-memory slots, scheduling) at
LIBERO's scale without LIBERO. Each step burns ``step_ms`` of *CPU time* (not wall
time: a busy loop on :func:`time.thread_time`), so when workers outnumber cores they
slow each other down exactly as real physics would; a sleep would hide contention.
The default, 29 ms, is LIBERO's measured physics-only cost per step (28.5–30 ms of CPU
through a worker on the 2-core CI machine, ``scripts/bench_envs.py``, docs/benchmarks.md;
a worker adds ~0.5 ms): what a LIBERO step costs the CPU where a GPU renders. A CPU-rendered
LIBERO step with two 128² cameras costs about 125 ms.

Observations are deterministic and checkable, so a test can prove a reader never saw
a half-written slot: every pixel of every camera holds the byte
``(episode_step + 31 * episode_id) % 251`` and ``proprio[0] = episode_step``,
``proprio[1] = episode_id`` (the rest zero). ``episode_step`` is 0 in the observation
returned by ``reset`` and counts steps; ``episode_id`` is the number of resets this
instance had before the current episode (0 for the first episode, +1 per reset;
the constructor does not reset).

The task is learnable: the start draws task ``k`` in ``range(NUM_TASKS)``, named by the
instruction ``"synthetic task {k}"``; each task has a fixed target action ``a*``. Reward
is ``1 − mean|a − a*| / 2``; success (which terminates) is ``mean|a − a*| < 0.1``.
``reset`` costs no CPU time, only steps do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from dvla.catalog import EPISODE_LIMITS
from dvlad.envs.base import Observation, StepResult, start_rng
from dvlad.spaces import ACTION_DIM, EnvSpec

NUM_TASKS = 8
NUM_INIT_STATES = 50
"""Fixed starts for ``reset(init_state=i)``; start i is seeded by ``[INIT_STATE_TAG, i]``."""
INIT_STATE_TAG = 0x5F7E
SUCCESS_ERROR = 0.1


def target_action(task: int) -> np.ndarray:
    """The fixed target action of a task (a pure function of ``task``)."""
    return np.random.default_rng([INIT_STATE_TAG, NUM_TASKS, task]).uniform(-0.9, 0.9, ACTION_DIM)


def burn_cpu(ms: float) -> None:
    """Spin until this thread has used ``ms`` milliseconds of CPU time."""
    end = time.thread_time() + ms / 1000.0
    while time.thread_time() < end:
        pass


class SyntheticEnv:
    """See the module docstring: a CPU-cost model with checkable observations."""

    def __init__(
        self,
        step_ms: float = 29.0,
        image_size: int = 128,
        cameras: Sequence[str] = ("agentview", "wrist"),
        proprio_dim: int = 8,
        max_episode_steps: int = EPISODE_LIMITS["synthetic"],
        seed: int | None = None,
    ) -> None:
        if proprio_dim < 2:
            raise ValueError(f"proprio_dim must be >= 2 (step and episode id), got {proprio_dim}")
        self.step_ms = step_ms
        self.spec = EnvSpec(
            cameras={name: (image_size, image_size) for name in cameras},
            proprio_dim=proprio_dim,
            max_episode_steps=max_episode_steps,
            num_init_states=NUM_INIT_STATES,
        )
        self._rng = np.random.default_rng(seed)
        self._episode_id = -1
        self._step = 0
        self._task = 0
        self._target = target_action(0)

    @property
    def task(self) -> int:
        return self._task

    @property
    def target(self) -> np.ndarray:
        """The current task's target action ``a*``."""
        return self._target.copy()

    def reset(self, seed: int | None = None, init_state: int | None = None) -> Observation:
        """Draw a task. ``init_state`` (in ``range(NUM_INIT_STATES)``) wins over ``seed``."""
        rng = start_rng(seed, init_state, num_init_states=NUM_INIT_STATES, tag=INIT_STATE_TAG, fallback=self._rng)
        self._task = int(rng.integers(NUM_TASKS))
        self._target = target_action(self._task)
        self._episode_id += 1
        self._step = 0
        return self._observe()

    def step(self, action: np.ndarray) -> StepResult:
        burn_cpu(self.step_ms)
        a = np.clip(np.nan_to_num(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM)), -1.0, 1.0)
        error = float(np.abs(a - self._target).mean())
        self._step += 1
        success = error < SUCCESS_ERROR
        return StepResult(
            obs=self._observe(),
            reward=1.0 - error / 2.0,
            terminated=success,
            truncated=not success and self._step >= self.spec.max_episode_steps,
            success=success,
            info={"error": error},
        )

    def close(self) -> None:
        pass

    def _observe(self) -> Observation:
        value = (self._step + 31 * self._episode_id) % 251
        images = {name: np.full((h, w, 3), value, np.uint8) for name, (h, w) in self.spec.cameras.items()}
        proprio = np.zeros(self.spec.proprio_dim, np.float32)
        proprio[0], proprio[1] = self._step, self._episode_id
        return Observation(images=images, proprio=proprio, instruction=f"synthetic task {self._task}")
