"""Greedy evaluation episodes from fixed starts, stepped over a pool of env worker processes.

Why this shape:
- **Every env the same way.** LIBERO, reach, synthetic and user envs all run through the job's own
  :class:`EnvWorkerPool`: ``W`` worker processes step ``E`` envs in shared-memory slots, and one
  batched forward pass (on the GPU where there is one) acts for every env with an episode running.
  With ``W = E = 1`` it is the serial evaluator: one env, one observation per forward pass.
- **No waves.** An env whose episode ended starts its next start in the same round trip in which
  the others step on (:meth:`EnvWorkerPool.command`), so a long episode never holds the rest idle.
- **Few rebuilds.** A LIBERO env is built for one task, and switching costs a rebuild (5–15 s). An
  env takes the next start of the task it serves; only when that task has none left does it switch,
  to the task with the most starts left (which also balances the tasks over the envs).
- **The same numbers however they are spread.** An episode depends only on its start (the env
  replays a fixed start exactly) and on the policy's most likely actions, so the outcome of each
  start is the same for 1 env or 16 and in any order; episodes come back in start order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dvlad.lanes.device import Placement
from dvlad.lanes.env_workers import (
    CMD_HOLD,
    CMD_RESET,
    CMD_START,
    CMD_STEP,
    KEEP_TASK,
    EnvWorkerError,
    EnvWorkerPool,
    GroupObs,
    decode_instruction,
)
from dvlad.policies import ObsBatch, Policy
from dvlad.spaces import ACTION_DIM


@dataclass(frozen=True)
class Start:
    """Where one evaluation episode begins: fixed start (init state) ``index`` of ``task``, the
    env's :meth:`set_task` index (LIBERO); or, with ``task`` None (an env of one task), the episode
    drawn from seed ``index``."""

    task: int | None
    index: int


@dataclass(frozen=True)
class Episode:
    start: Start
    success: bool
    ret: float
    length: int
    """Env steps (policy actions), settle steps not counted."""
    final_proprio: tuple[float, ...]
    """The proprio of the episode's last observation (where the arm ended): two runs of one start
    that end alike but took other paths tell apart here."""


class StartQueue:
    """The starts not yet handed out, by task; see the module docstring for the order."""

    def __init__(self, starts: Sequence[Start]) -> None:
        self._by_task: dict[int | None, deque[Start]] = {}
        for start in starts:
            self._by_task.setdefault(start.task, deque()).append(start)

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_task.values())

    def next_for(self, serving: int | None) -> Start | None:
        """The next start for an env now serving task ``serving``: one of its task if any is left,
        else one of the task with the most left; None when all are handed out."""
        if self._by_task.get(serving):
            return self._by_task[serving].popleft()
        task = max(self._by_task, key=lambda t: len(self._by_task[t]), default=None)
        return self._by_task[task].popleft() if task is not None and self._by_task[task] else None


def greedy_actions(policy: Policy, placement: Placement, obs: GroupObs, rows: np.ndarray) -> np.ndarray:
    """The policy's most likely action chunks [len(rows), K, 7] for the envs ``rows`` of ``obs``: host
    arrays in, one forward pass on ``placement``'s device, host array out."""
    batch = ObsBatch(images={cam: torch.from_numpy(v[rows]) for cam, v in obs.images.items()},
                     proprio=torch.from_numpy(obs.proprio[rows]),
                     instruction=policy.tokenize([decode_instruction(obs.instruction[j]) for j in rows]))
    with torch.no_grad(), placement.autocast():
        out = policy.act(batch.to(placement.device), deterministic=True)
    return out.actions.float().cpu().numpy()


def run_episodes(pool: EnvWorkerPool, policy: Policy, placement: Placement, starts: Sequence[Start],
                 serving: Sequence[int | None], on_episode: Callable[[Episode], None] = lambda e: None
                 ) -> list[Episode]:
    """One greedy episode of ``policy`` from each of ``starts`` over ``pool`` (env group 0), whose env
    ``j`` serves task ``serving[j]`` when this begins; ``on_episode`` is told of each as it ends.
    Returns the episodes in the order of ``starts``. Raises :class:`EnvWorkerError` if a worker died
    or hung (its episodes are lost, and an evaluation must not report fewer than it was asked for)."""
    envs = pool.envs_per_group
    queue, serving = StartQueue(starts), list(serving)
    running: list[Start | None] = [None] * envs
    commands = np.full(envs, CMD_HOLD, np.int8)
    actions = np.zeros((envs, pool.action_chunk, ACTION_DIM), np.float32)
    seeds, tasks = np.zeros(envs, np.int64), np.full(envs, KEEP_TASK, np.int32)
    done: list[Episode] = []
    while True:
        rebuilds = False
        for j in np.flatnonzero(commands == CMD_HOLD):  # free envs take their next start
            start = queue.next_for(serving[j])
            if start is not None:
                rebuilds |= start.task != serving[j]
                running[j], seeds[j] = start, start.index
                commands[j] = CMD_RESET if start.task is None else CMD_START
                tasks[j] = KEEP_TASK if start.task is None else start.task
                serving[j] = start.task
        if all(r is None for r in running):
            break
        pool.command(0, commands, actions=actions, seeds=seeds, tasks=tasks)
        result = pool.wait(0, pool.build_timeout_s if rebuilds else None)  # a new task: a new simulator
        if result.dropped_envs:
            raise EnvWorkerError(f"the env worker(s) of env(s) {result.dropped_envs} died or stopped answering: "
                                 "their episodes are lost (env.step_timeout_s bounds a step)")
        out, obs = result.outcome, pool.read(0)  # an ended episode's slot keeps its last observation
        for j in np.flatnonzero((commands == CMD_STEP) & result.done):
            start = running[j]
            assert start is not None
            episode = Episode(start, bool(out["success"][j]), float(out["episode_return"][j]),
                              int(out["episode_length"][j]), tuple(obs.proprio[j].tolist()))
            done.append(episode)
            on_episode(episode)
            running[j] = None
        alive = np.array([r is not None for r in running])
        commands = np.where(alive, CMD_STEP, CMD_HOLD).astype(np.int8)
        if alive.any():
            rows = np.flatnonzero(alive)
            actions[rows] = greedy_actions(policy, placement, obs, rows)
    order = {start: i for i, start in enumerate(starts)}
    return sorted(done, key=lambda e: order[e.start])
