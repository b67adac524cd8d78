"""The infer lane: batch a ready env group, act, hand the actions back, fill segments.

One loop serves both modes with the same code:
- **async**: every env group is in flight at once; while the workers step one group the
  actor infers another, and learning runs beside both in its own process;
- **sync**: one group in flight at a time and ``max_staleness = 0``, so sampling,
  inference and learning strictly alternate, as colocated RL frameworks run.

Staleness is enforced here: rollout ``r`` (the r-th segment of each group, consumed by
learner update ``r``) may only be acted on with weights of version ≥ ``r − max_staleness``.
If the actor has none that new, sampling pauses until the learner publishes one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dvlad.lanes.device import CPU, Placement
from dvlad.lanes.env_workers import EnvWorkerPool, GroupObs, GroupResult, decode_instruction
from dvlad.lanes.episodes import EpisodeStats
from dvlad.lanes.timeline import LaneRecorder
from dvlad.lanes.trajectory import TrajectoryQueue
from dvlad.lanes.weights import WeightPlane
from dvlad.policies.base import ActOutput, ObsBatch, Policy
from dvlad.spaces import image_key


class _Stopped(Exception):
    """Raised inside the loop when the job asked to stop while the actor was blocked."""


@dataclass
class ActorConfig:
    segment_steps: int
    max_staleness: int
    pipelined: bool
    """async: all groups in flight; sync: one at a time."""
    episodic: bool = False
    """GRPO: every segment starts all envs of a group from a reset, envs sharing a start in
    blocks of ``group_size``; an env whose episode ended holds until the segment ends."""
    group_size: int = 1
    seed: int = 0
    compile: bool = False
    """Act through :func:`compile_act` (``pipeline.compile_actor``)."""
    replica: int = 0
    """Which actor replica of the job this is: the weight plane's staging it swaps from."""
    block_timeout_s: float = 600.0
    """Longest the actor waits for new weights or a free queue slot before failing the job."""


def compile_act(policy: Policy, placement: Placement) -> Callable[..., ActOutput]:
    """``policy.act`` compiled whole for the group's fixed batch shape; on a GPU as CUDA graphs
    (``mode="reduce-overhead"``).

    Why: eager, a 1 B forward is hundreds of kernels launched one by one from Python, which
    trickle onto a GPU the learner shares (docs/benchmarks.md); a graph is one launch per batch.
    ``fullgraph``: a graph break would put Python back between the kernels, so it is an error.
    The weights swap in place (``WeightPlane.swap_into``), so a captured graph stays valid across
    versions; its outputs are overwritten by the next replay, and :meth:`Actor.act` copies them
    to the host before then."""
    mode = "reduce-overhead" if placement.on_gpu else None
    return torch.compile(policy.act, fullgraph=True, dynamic=False, mode=mode)


class _GroupState:
    def __init__(self, envs: int, queue: TrajectoryQueue) -> None:
        self.queue = queue  # where this group's segments go: its learner rank's queue
        self.slot: int | None = None  # trajectory-queue slot being filled
        self.t = 0  # row of the segment the next transition goes to
        self.rollout = 0
        self.alive = np.ones(envs, dtype=bool)  # episodic mode: env still in its episode
        self.ended: dict[int, tuple[float, bool, int]] = {}  # episodic mode: this rollout's episodes
        self.needs_reset = False


class Actor:
    """One actor replica: drives its env worker pool, acts, fills segments into the queues of the
    learner ranks its env groups feed (``queues[g]`` for group ``g``), swaps in new versions."""

    def __init__(self, pool: EnvWorkerPool, policy: Policy, flat: torch.Tensor, plane: WeightPlane,
                 queues: Sequence[TrajectoryQueue], cfg: ActorConfig, timeline: LaneRecorder,
                 start_rollout: int = 0, placement: Placement = CPU, episodes: EpisodeStats | None = None) -> None:
        if len(queues) != pool.groups:
            raise ValueError(f"one trajectory queue per env group: {pool.groups} groups, {len(queues)} queues")
        self.pool, self.policy, self.flat, self.plane = pool, policy, flat, plane
        self.queues = list(dict.fromkeys(queues))  # distinct, in group order
        self.placement = placement
        self._act = compile_act(policy, placement) if cfg.compile else policy.act
        self.cfg, self.timeline = cfg, timeline
        self.version = -1
        self.env_steps = 0
        self.episodes = episodes or EpisodeStats(window=max(100, pool.envs_per_group) if cfg.episodic else 100)
        self.dropped_episodes = 0
        self.weight_wait_s = 0.0
        self._tokens_cache: dict[bytes, torch.Tensor] = {}
        self._rng = np.random.default_rng(cfg.seed if cfg.replica == 0 else [cfg.seed, cfg.replica])
        self.groups = [_GroupState(pool.envs_per_group, q) for q in queues]
        for st in self.groups:
            st.rollout = start_rollout
            st.needs_reset = cfg.episodic
        self._in_flight: set[int] = set()
        self._should_stop = lambda: False

    # -- the loop -------------------------------------------------------------------------
    def run(self, should_stop) -> None:
        """Serve env groups round robin until ``should_stop()``; then drain in-flight steps."""
        self._should_stop = should_stop
        try:
            while not should_stop():
                for g in range(self.pool.groups):
                    if g in self._in_flight:
                        self._arrive(self.pool.wait(g))
                    self._serve(g)
                    if not self.cfg.pipelined:
                        self._arrive(self.pool.wait(g))
        except _Stopped:
            pass
        finally:
            self._drain()

    def _drain(self) -> None:
        for g in sorted(self._in_flight):
            self._arrive(self.pool.wait(g))

    def _serve(self, g: int) -> None:
        """Group ``g``'s observations are ready: reset it, or act on it."""
        st = self.groups[g]
        if st.needs_reset:  # episodic: all envs of the group restart, blocks sharing a seed
            seeds = self._rng.integers(0, 2**31 - 1, size=-(-len(st.alive) // self.cfg.group_size))
            self.pool.reset(g, np.repeat(seeds, self.cfg.group_size)[: len(st.alive)])
            self._in_flight.add(g)
            st.needs_reset = False
            st.alive[:] = True
            return
        self._gate(st.rollout)
        if st.slot is None:
            st.slot = self._blocking(lambda: st.queue.try_acquire(timeout=0.2), "a free trajectory-queue slot")
            seg = st.queue.view(st.slot)
            seg["valid"][:] = False
            seg["rollout"][...] = st.rollout
            seg["group"][...] = g
        obs = self.pool.read(g)
        batch = self.observation_batch(obs)
        t0 = time.monotonic()
        out = self.act(batch)
        t1 = time.monotonic()
        self.timeline.add("infer", t0, t1, len(st.alive))
        seg = st.queue.view(st.slot)
        self._write_obs_row(seg, st.t, obs, batch.instruction)
        seg["tokens"][st.t] = out.tokens.numpy()
        seg["logprob"][st.t] = out.logprob.numpy()
        seg["value"][st.t] = out.value.numpy()
        seg["version"][st.t] = self.version
        seg["valid"][st.t] = st.alive
        self.pool.step(g, out.actions.numpy(), st.alive)
        self._in_flight.add(g)

    def act(self, obs: ObsBatch) -> ActOutput:
        """The policy's action chunk for a batch: host tensors in, host tensors out (on a GPU,
        the observations go over once per batch, and reading the outputs back is what waits
        for the forward pass)."""
        with torch.no_grad(), self.placement.autocast():
            out = self._act(obs.to(self.placement.device))
        return ActOutput(tokens=out.tokens.cpu(), actions=out.actions.float().cpu(),
                         logprob=out.logprob.float().cpu(), value=out.value.float().cpu())

    def _arrive(self, result: GroupResult) -> None:
        """Record what a group's step produced; close its segment when full."""
        g = result.group
        self._in_flight.discard(g)
        st = self.groups[g]
        self.env_steps += result.env_steps
        for start, end in result.intervals:
            self.timeline.add("sample", start, end, result.env_steps // max(len(result.intervals), 1))
        if st.slot is None:  # a reset round trip: nothing to record
            return
        seg, outcome = st.queue.view(st.slot), result.outcome
        # a time-limit truncation ends the episode for GAE too (CleanRL's convention): the
        # auto-reset has replaced the final observation, so there is no value to bootstrap from
        done = result.done
        seg["reward"][st.t] = outcome["reward"]
        seg["done"][st.t] = done
        seg["success"][st.t] = outcome["success"]
        seg["env_steps"][st.t] = outcome["env_steps"]
        for j in np.flatnonzero(done & st.alive):
            episode = (float(outcome["episode_return"][j]), bool(outcome["success"][j]),
                       int(outcome["episode_length"][j]))
            if self.cfg.episodic:
                st.ended[int(j)] = episode
            else:
                self.episodes.add(*episode)
        if self.cfg.episodic:
            st.alive &= ~done
        self._drop(result.dropped_envs)
        st.t += 1
        if st.t == self.cfg.segment_steps:
            obs = self.pool.read(g)
            self._write_obs_row(seg, st.t, obs, self._tokenize(obs.instruction))
            st.queue.publish(st.slot)
            self.episodes.add_rollout(st.ended)
            st.ended = {}
            st.slot, st.t = None, 0
            st.rollout += 1
            st.needs_reset = self.cfg.episodic

    def _drop(self, env_ids: list[int]) -> None:
        """Episodes of replaced workers: their rows in the open segment are masked out, so the
        learner never trains on them half-finished. Rows of the same episode that went out in
        earlier segments stay: they were complete, bootstrapped transitions when sent."""
        for i in env_ids:
            g, j = divmod(i, self.pool.envs_per_group)
            st = self.groups[g]
            self.dropped_episodes += 1
            if st.slot is None:
                continue
            seg = st.queue.view(st.slot)
            seg["valid"][: st.t + 1, j] = False
            seg["done"][min(st.t, self.cfg.segment_steps - 1), j] = True
            if self.cfg.episodic:
                st.alive[j] = False

    # -- weights --------------------------------------------------------------------------
    def _gate(self, rollout: int) -> None:
        """Swap to the newest weights; pause if they are too old for ``rollout``."""
        required = max(rollout - self.cfg.max_staleness, 0)  # never act before version 0
        self.version = self.plane.swap_into(self.flat, self.version, self.cfg.replica)
        if self.version >= required:
            return
        self._drain()  # let in-flight groups close their segments, or the learner may starve
        t0 = time.monotonic()

        def newer() -> int | None:
            self.plane.wait_for(required, timeout=0.2, replica=self.cfg.replica)
            self.version = self.plane.swap_into(self.flat, self.version, self.cfg.replica)
            return self.version if self.version >= required else None

        self._blocking(newer, f"weights of version ≥ {required}")
        self.weight_wait_s += time.monotonic() - t0

    def _blocking(self, attempt, what: str):
        """Retry ``attempt`` until it returns something, the job stops, or the timeout passes."""
        deadline = time.monotonic() + self.cfg.block_timeout_s
        while (got := attempt()) is None:
            if self._should_stop():
                raise _Stopped
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {self.cfg.block_timeout_s:.0f} s")
        return got

    # -- observations ---------------------------------------------------------------------
    def observation_batch(self, obs: GroupObs) -> ObsBatch:
        """The policy's input for a group's observations (the aux labels stay out of it)."""
        return ObsBatch(images={cam: torch.from_numpy(v) for cam, v in obs.images.items()},
                        proprio=torch.from_numpy(obs.proprio), instruction=self._tokenize(obs.instruction))

    def _tokenize(self, rows: np.ndarray) -> torch.Tensor:
        out = []
        for row in rows:
            key = row.tobytes()
            tokens = self._tokens_cache.get(key)
            if tokens is None:
                tokens = self.policy.tokenize([decode_instruction(row)])[0]
                self._tokens_cache[key] = tokens
            out.append(tokens)
        return torch.stack(out)

    @staticmethod
    def _write_obs_row(seg: dict, t: int, obs: GroupObs, instruction: torch.Tensor) -> None:
        for cam, img in obs.images.items():
            seg[image_key(cam)][t] = img
        seg["proprio"][t] = obs.proprio
        seg["instruction"][t] = instruction.numpy()
        if obs.aux is not None:
            seg["aux"][t] = obs.aux
