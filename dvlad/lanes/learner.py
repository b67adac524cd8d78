"""The learn lane: consume trajectory segments, compute advantages and losses, step,
publish each new version through the distribute lane, checkpoint.

Runs beside the actor so gradients overlap with simulation and inference: in its own
process (its own interpreter and torch threads), or with ``pipeline.learner = "thread"`` in a
thread of the actor's process (on a GPU its kernels on a low-priority stream, behind the
actor's inference). One update consumes one rollout: one segment of every env group.
Update ``r`` therefore trains on rollout ``r``, and the staleness of a sample is
``r − the version that acted``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from dvla import metric_names as m
from dvla.checkpoint import CHECKPOINT_NAME
from dvla.spec import JobSpec
from dvlad.gpu.pools import DualPool, adam_state_now
from dvlad.lanes.child import become_lane
from dvlad.lanes.demo_batches import DemoBatches
from dvlad.lanes.device import CPU, LEARNER_PRIORITY, Placement
from dvlad.lanes.distribute import Distributor
from dvlad.lanes.messages import (
    Checkpointed,
    LaneBusy,
    LearnerFailed,
    LearnerReady,
    OtherNodes,
    UpdateStats,
    VersionPublished,
)
from dvlad.lanes.node_part import NodePart, NodeState
from dvlad.lanes.ranks import TIMEOUT, LearnerRanks, PeersGone, Verdict
from dvlad.lanes.trajectory import TrajectoryQueue, TrajectoryQueueHandle
from dvlad.lanes.vram import peak_allocated, tensor_bytes
from dvlad.lanes.weights import Published, Route, WeightPlane, WeightPlaneHandle
from dvlad.policies import build_policy
from dvlad.policies.base import ObsBatch
from dvlad.policies.checkpoint import load_weights, optimizer_state, save_training_checkpoint
from dvlad.rl import ALGORITHMS, Minibatch, Rollout, TrainingRows, explained_variance
from dvlad.sharing import base as shared
from dvlad.spaces import EnvSpec

STOP_POLL_S = 0.05
"""How often a learner rank done with its updates looks whether the job has stopped. Polled, not
waited on: a process killed asleep in an ``mp.Event``'s wait would hang the job's ``stop.set()``
(its ``notify_all`` waits for every sleeper to wake)."""


@dataclass(frozen=True)
class LearnerConfig:
    """What the learn lane is given by the pipeline, which has already worked it out (it travels to
    a learner process pickled)."""

    spec: JobSpec
    env_spec: EnvSpec
    output_dir: str
    placement: Placement = CPU
    """The job's placement, as the pipeline checked it before starting the lane."""
    rollout_segments: int = 1
    """Segments of one rollout this rank trains on (one per env group of the replicas it serves)."""
    rank: int = 0
    """This learner's rank among its node's learner ranks; local rank 0 reports the node's updates."""
    part: NodePart | None = None
    """Where the job's data-parallel learner ranks meet (:mod:`dvlad.lanes.ranks`), on this node and
    the others (:mod:`dvlad.lanes.node_part`); global rank 0 writes the checkpoints. None: this
    learner alone."""
    backend: str = "gloo"
    """torch.distributed's backend between the ranks: NCCL between distinct GPUs, Gloo otherwise
    (CPU devices, or ranks sharing a GPU, which NCCL refuses)."""
    routes: tuple[Route, ...] | None = None
    """The copies this rank makes of each version (its part of the replication plan); None: straight
    to every replica; empty: none (another rank publishes)."""


Batch = dict[str, torch.Tensor]
"""A rollout's segments stacked along a new first axis: every array of the trajectory layout
(``trajectory.segment_layout``) as [S, T, E, ...]; observations have T + 1 steps."""


class NonFiniteError(ArithmeticError):
    """A reward, gradient or weight is NaN or infinite: training on would save a checkpoint of
    NaNs over the last good one."""


def _batch_from_segments(segments: list[dict[str, np.ndarray]]) -> Batch:
    """Copy segments (shared-memory views) out, stacked along a new segment axis [S, ...]."""
    return {k: torch.from_numpy(np.stack([s[k] for s in segments])) for k in segments[0]}


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[S, T, E, ...] -> [S·T·E, ...]"""
    return x.reshape(-1, *x.shape[3:])


def _observations(b: Batch, steps: slice) -> Batch:
    """The observation arrays (cameras, proprio, instruction) at ``steps`` of every segment, one row
    per (segment, step, env)."""
    return {k: _flat(v[:, steps]) for k, v in b.items() if k.startswith("image/") or k in ("proprio", "instruction")}


def _obs_batch(obs: Batch, rows: torch.Tensor | slice = slice(None)) -> ObsBatch:
    """``rows`` of :func:`_observations` as the policy takes them."""
    return ObsBatch(images={k.split("/", 1)[1]: v[rows] for k, v in obs.items() if k.startswith("image/")},
                    proprio=obs["proprio"][rows], instruction=obs["instruction"][rows])


class Learner:
    """The optimisation half of the learn lane, without any process plumbing (testable).

    :meth:`train` is CleanRL's update (``ppo_continuous_action.py``), with its names: the rollout
    is scored once by the job's algorithm (:mod:`dvlad.rl.algorithms`), then ``update_epochs``
    passes of shuffled minibatches each take one clipped gradient step on the algorithm's loss."""

    def __init__(self, cfg: LearnerConfig) -> None:
        self.cfg, self.args, self.placement = cfg, cfg.spec.algo, cfg.placement
        self.algorithm = ALGORITHMS[self.args.name]
        self.device = self.placement.device
        self.pools = DualPool.for_job(cfg.spec, self.device, separate=not self.placement.learner_thread)
        self.version = 0
        self.trained_env_steps = 0
        self.checkpoint_path = Path(cfg.output_dir) / CHECKPOINT_NAME
        self.base = shared.from_environment() if cfg.spec.resources.share_base else None
        """The shared base the policy's trunk maps (``resources.share_base`` under dvlad), else None."""
        with self.pools.weights():  # what lives to the end: weights and optimizer state (dvlad/gpu/pools.py)
            self.policy, self.flat = build_policy(cfg.spec, cfg.env_spec, self.device, self.placement.learner_dtype)
            # Adam without weight decay (CleanRL's eps); on a GPU the fused kernel: one launch per step
            self.optimizer = torch.optim.Adam(self.policy.published_parameters(), lr=self.args.learning_rate,
                                              eps=1e-5, fused=self.placement.on_gpu)
            if self.pools.separate:
                adam_state_now(self.optimizer)
            if cfg.spec.policy.checkpoint:
                load_weights(self.flat, Path(cfg.spec.policy.checkpoint))
            if cfg.spec.train.resume and self.checkpoint_path.exists():
                self.restore(self.checkpoint_path)
        part = cfg.part
        self.rank = part.global_rank(cfg.rank) if part else 0
        self.rows: Callable[[Batch], TrainingRows] = self._rollout_rows if self.algorithm.advantages else DemoBatches(
            self.args.demonstrations, cfg.env_spec, self.policy, self.device, cfg.spec.job.seed + self.rank).rows
        """Where an update's rows come from: the scored rollout (PPO, GRPO) or demonstrations (bc)."""
        self.pools.seal(self.weight_bytes())
        self.ranks: LearnerRanks | None = None
        if part is not None and part.world > 1:
            timeout = timedelta(seconds=cfg.spec.placement.collective_timeout_s) if part.nodes > 1 else TIMEOUT
            self.ranks = LearnerRanks(self.rank, part.world, part.rendezvous, self.device, cfg.backend, timeout,
                                      part.others())
            self.ranks.bind(self.policy.published_parameters(), self.flat)
            self.ranks.broadcast_(self.flat)  # one start for all, however each was built
            self.ranks.check_same_start(self.version, self.trained_env_steps)

    # -- updates --------------------------------------------------------------------------
    def update(self, segments: list[dict[str, np.ndarray]]) -> UpdateStats:
        """One rollout in, one new version out."""
        return self.train(_batch_from_segments(segments))

    def train(self, b: Batch) -> UpdateStats:
        """One update on a rollout already stacked by :func:`_batch_from_segments`. Raises
        :class:`NonFiniteError` before a non-finite reward, gradient or weight reaches the weights
        (and so a checkpoint)."""
        args = self.args
        if not torch.isfinite(b["reward"][b["valid"]]).all():
            bad = int((~torch.isfinite(b["reward"][b["valid"]])).sum())
            raise NonFiniteError(f"the env {self.cfg.spec.env.name!r} returned {bad} non-finite rewards (NaN or "
                                 f"Inf) in the rollout of update {self.version + 1}: stopped before training on "
                                 "them; the last checkpoint is kept")
        staleness = (self.version - b["version"])[b["valid"]]
        b = {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
        rows = self.rows(b)  # the scored rollout, or demonstrations

        # optimise the policy (and value) network: update_epochs passes of shuffled minibatches, exactly
        # args.minibatches of them a pass (data-parallel ranks must take the same number of steps)
        minibatch_size = max(1, len(rows.inds) // args.minibatches)
        b_proximal = (self._proximal_logprob(rows.inds, rows.obs, rows.actions, rows.logprobs, minibatch_size)
                      if args.proximal_clip else None)
        totals: dict[str, float] = {}
        minibatches = 0
        for _epoch in range(args.update_epochs):
            b_perm = rows.inds[torch.randperm(len(rows.inds), device=rows.inds.device)]
            for mb_inds in torch.tensor_split(b_perm, args.minibatches):
                stats: dict[str, float] = {}
                if len(mb_inds):
                    with self.placement.autocast():
                        new = self.policy.evaluate(_obs_batch(rows.obs, mb_inds), rows.actions[mb_inds])
                    loss, stats = self.algorithm.loss(Minibatch(
                        newlogprob=new.logprob, logprobs=rows.logprobs[mb_inds], entropy=new.entropy,
                        newvalue=new.value, values=rows.values[mb_inds], advantages=rows.advantages[mb_inds],
                        returns=rows.returns[mb_inds],
                        proximal_logprob=None if b_proximal is None else b_proximal[mb_inds]), args)
                    if args.aux_coef and new.aux is not None and rows.aux is not None:
                        aux_loss = self.policy.aux_loss(new.aux, rows.aux[mb_inds])
                        loss = loss + args.aux_coef * aux_loss
                        stats[m.AUX_LOSS] = float(aux_loss.detach())
                    self.optimizer.zero_grad(set_to_none=self.ranks is None)  # ranks: grads are views
                    loss.backward()
                elif self.ranks is None:
                    continue
                else:
                    self.optimizer.zero_grad(set_to_none=False)  # joins the all-reduce with nothing
                if self.ranks is not None and not self.ranks.average_gradients(len(mb_inds)):
                    continue  # no rank had a sample
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), args.max_grad_norm))
                if not math.isfinite(grad_norm):
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
                    raise NonFiniteError(f"non-finite gradient (norm {grad_norm}) in update {self.version + 1}"
                                         f"{f' ({shown})' if shown else ''}: stopped before the step; the last "
                                         "checkpoint is kept")
                self.optimizer.step()
                if stats:
                    stats[m.GRAD_NORM] = grad_norm
                    for k, v in stats.items():
                        totals[k] = totals.get(k, 0.0) + v
                    minibatches += 1

        explained_var = (explained_variance(rows.values[rows.inds], rows.returns[rows.inds]) if self.algorithm.critic
                         else None)
        samples, env_steps = len(rows.inds), int(b["env_steps"][b["valid"]].sum())
        width = self.cfg.spec.pipeline.max_staleness + 2 if self.ranks else 1  # ranks: one length for all
        hist = np.bincount(staleness.numpy().clip(0, width - 1 if self.ranks else None), minlength=width)
        if self.ranks is not None:  # the job's figures: every rank's samples
            summed = self.ranks.all_sum([samples, env_steps, *hist])
            samples, env_steps, hist = int(summed[0]), int(summed[1]), np.array(summed[2:], dtype=np.int64)
            hist = hist[:max(1, int(np.flatnonzero(hist).max(initial=0)) + 1)]
        if not torch.isfinite(self.flat).all():
            raise NonFiniteError(f"non-finite weights after update {self.version + 1}: stopped before they "
                                 "were published or saved; the last checkpoint is kept")
        self.version += 1
        self.trained_env_steps += env_steps
        staleness_of = np.arange(len(hist))
        return UpdateStats(
            version=self.version, samples=samples, trained_env_steps=self.trained_env_steps,
            staleness_mean=float((hist * staleness_of).sum() / hist.sum()) if hist.sum() else 0.0,
            staleness_max=float(staleness_of[hist > 0].max()) if hist.sum() else 0.0,
            staleness_hist=tuple(int(n) for n in hist),
            losses={k: v / minibatches for k, v in totals.items()} if minibatches else {},
            explained_variance=explained_var)

    def _rollout_rows(self, b: Batch) -> TrainingRows:
        """The rollout scored by the job's algorithm and flattened: one row per (segment, step, env);
        the update trains on the valid rows."""
        rollout = Rollout(rewards=b["reward"], values=b["value"], dones=b["done"], successes=b["success"],
                          valid=b["valid"])
        assert self.algorithm.advantages is not None  # only algorithms that score rollouts read them
        advantages = self.algorithm.advantages(rollout, self.args, lambda: self._next_value(b))
        return TrainingRows(obs=_observations(b, slice(None, -1)), actions=_flat(b["tokens"]),
                            logprobs=_flat(b["logprob"]), advantages=_flat(advantages), values=_flat(rollout.values),
                            aux=_flat(b["aux"][:, :-1]) if "aux" in b else None,
                            inds=torch.nonzero(_flat(rollout.valid), as_tuple=True)[0])

    def _next_value(self, b: Batch) -> torch.Tensor:
        """V of the state after each segment's last step, [S, E] (GAE's bootstrap)."""
        s, _, e = b["valid"].shape
        with torch.no_grad(), self.placement.autocast():
            return self.policy.value(_obs_batch(_observations(b, slice(-1, None)))).reshape(s, e)

    def _proximal_logprob(self, b_inds: torch.Tensor, b_obs: Batch, b_actions: torch.Tensor,
                          b_logprobs: torch.Tensor, chunk: int) -> torch.Tensor:
        """Log-probs of the sampled tokens under the weights as this update begins (decoupled
        PPO's proximal policy), for every row; rows outside ``b_inds`` stay 0 and are never read."""
        out = torch.zeros_like(b_logprobs)
        with torch.no_grad(), self.placement.autocast():
            for start in range(0, len(b_inds), chunk):
                rows = b_inds[start:start + chunk]
                out[rows] = self.policy.evaluate(_obs_batch(b_obs, rows), b_actions[rows]).logprob.float()
        return out

    def with_gpu_memory(self, stats: UpdateStats) -> UpdateStats:
        """``stats`` with the weight pool this learner holds (weights and optimizer state; the
        gradients are freed and made again every minibatch, so they count with the activations)
        and, when it is a process of its own, its allocator's peak since the last update (``vram.py``)."""
        return dataclasses.replace(
            stats, learner_weight_bytes=self.weight_bytes(),
            learner_peak_bytes=None if self.placement.learner_thread else peak_allocated(self.device))

    def weight_bytes(self) -> int:
        """This learner's part of the weight pool: its weights and optimizer state."""
        state = [t for st in self.optimizer.state.values() for t in st.values() if torch.is_tensor(t) and t.is_cuda]
        params = list(self.policy.parameters())  # frozen ones (LoRA's trunk) too; views of flat count once
        return tensor_bytes([*shared.private([*params, *self.policy.buffers()]), *state])  # not a shared base

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path: Path | None = None) -> Path:
        """Weights, optimizer state and counters in one safetensors file, written atomically; first,
        a shared base's hash is checked (:class:`~dvlad.sharing.base.BaseChanged` if it was written)."""
        if self.base is not None:
            self.base.verify()
        path = path or self.checkpoint_path
        save_training_checkpoint(path, self.flat, self.optimizer.state_dict(), version=self.version,
                                 trained_env_steps=self.trained_env_steps, spec=self.cfg.spec)
        return path

    def restore(self, path: Path) -> None:
        """Resume weights, optimizer state and counters from a checkpoint."""
        tensors, meta = load_weights(self.flat, path)
        self.optimizer.load_state_dict(optimizer_state(tensors, self.optimizer.state_dict()))
        self.version = int(meta["version"])
        self.trained_env_steps = int(meta["trained_env_steps"])


def learner_main(cfg: LearnerConfig, queue_handle: TrajectoryQueueHandle, plane_handle: WeightPlaneHandle,
                 messages, stop, node: NodeState | None = None) -> None:
    """Entry point of the learn lane, a process of its own or a thread of the actor's process
    (``Placement.learner_thread``). Talks to the job by the messages of ``messages.py`` only, and
    reads what its node's main process tells the ranks in ``node`` (needed with several ranks)."""
    if not cfg.placement.learner_thread:
        become_lane(f"dvla-learner-{cfg.rank}")
        torch.set_num_threads(cfg.spec.resources.torch_threads)
    with cfg.placement.lane_stream(LEARNER_PRIORITY):
        _learn(cfg, queue_handle, plane_handle, messages, stop, node)


def _learn(cfg: LearnerConfig, queue_handle: TrajectoryQueueHandle, plane_handle: WeightPlaneHandle,
           messages, stop, node: NodeState | None) -> None:
    traj = plane = distributor = learner = None
    try:
        learner = Learner(cfg)
        traj, plane = TrajectoryQueue.attach(queue_handle), WeightPlane.attach(plane_handle)
        reports = cfg.rank == 0  # local rank 0 reports this node's updates
        saves = learner.rank == 0  # global rank 0 writes the job's checkpoints
        parent = os.getppid()  # the job's main process: another parent means it is gone
        agreement = _Agreement(cfg, learner.ranks, node, messages, parent) if learner.ranks is not None else None

        def published(version: int, t0: float, published: Published) -> None:
            messages.put(LaneBusy("distribute", t0, t0 + published.seconds, 1))
            messages.put(VersionPublished(version, published.seconds,
                                          tuple(sorted(published.replica_seconds.items()))))

        if stop.is_set():  # the job stopped during set-up (pipeline.StoppedInSetup): nothing trained, nothing to save
            return
        if cfg.routes is None or cfg.routes:
            distributor = Distributor(plane, cfg.placement.device, cfg.routes, on_published=published)
            distributor.publish(learner.flat, learner.version)
        messages.put(LearnerReady(learner.version, learner.trained_env_steps, os.getpid(), cfg.rank))
        rollouts = _Rollouts(traj, cfg.rollout_segments, parent)
        every = cfg.spec.train.checkpoint_every
        while True:
            slots = rollouts.take(learner.version, stop)
            if agreement is not None and not agreement.before_update(slots is not None):
                break  # some rank stops: all stop together, before the next all-reduce
            if slots is None:
                break
            t0 = time.monotonic()
            batch = _batch_from_segments([traj.view(s) for s in slots])  # the one copy out of shm
            for s in slots:  # free the slots at once: the actor may refill them while we train
                traj.release(s)
            if distributor is not None:
                distributor.flush()  # the last version has left the weights: the update may write them
            if learner.ranks is not None:
                learner.ranks.take_collective_s()  # the agreement's wait is for the slowest rollout, not the update
            try:
                stats = learner.train(batch)
            except torch.OutOfMemoryError as exc:  # the hard cap: say which pool, not only "out of memory"
                raise (learner.pools.overflow_from_oom() or exc) from exc
            if learner.ranks is not None:
                learner.ranks.check_identical(learner.flat, learner.version)
            t1 = time.monotonic()
            if distributor is not None:
                distributor.publish(learner.flat, learner.version)
            messages.put(LaneBusy("learn", t0, t1, stats.samples))
            if reports:
                stats = dataclasses.replace(stats, learn_s=t1 - t0, collective_s=None if learner.ranks is None else
                                            learner.ranks.take_collective_s())
                if cfg.placement.on_gpu:
                    stats = learner.with_gpu_memory(stats)
                messages.put(stats)
                if saves and every and learner.version % every == 0:
                    messages.put(Checkpointed(str(learner.save()), learner.version))
        if saves:
            messages.put(Checkpointed(str(learner.save()), learner.version))
        if agreement is not None:
            agreement.after_stop(stop, learner.flat)
        if distributor is not None:
            distributor.close()
    except PeersGone as exc:  # in a job of several nodes: "node 1's ranks went away: ..." says it all
        messages.put(OtherNodes(0, failure=str(exc)) if cfg.part and cfg.part.nodes > 1
                     else LearnerFailed(traceback.format_exc(), cfg.rank))
    except BaseException:
        messages.put(LearnerFailed(traceback.format_exc(), cfg.rank))
    finally:
        if learner is not None and learner.ranks is not None:
            learner.ranks.close()
        for part in (traj, plane):
            if part is not None:
                part.close()


class _Agreement:
    """A learner rank's side of the ranks' agreement before each update (:meth:`LearnerRanks.agree`):
    all train the update or all stop, and in a job of several nodes a node stops when another does
    (for its reason), fails when another fails, and counts the env steps of all (the job's budget)."""

    def __init__(self, cfg: LearnerConfig, ranks: LearnerRanks, node: NodeState | None, messages,
                 parent: int) -> None:
        assert cfg.part is not None and node is not None, "several ranks need their part and their node's state"
        self.part, self.ranks, self.node, self.messages, self.parent = cfg.part, ranks, node, messages, parent
        self.speaks = cfg.rank == 0  # the node's env steps and stop reason come from its local rank 0
        self.last: Verdict | None = None

    def before_update(self, ready: bool) -> bool:
        """Whether every rank trains this update (False: all stop now)."""
        node, part = self.node, self.part
        failed = node.failed or (not ready and node.stop_reason is None)  # a node stopping for no reason fails
        verdict = self.last = self.ranks.agree(
            ready, part.node, part.nodes, failed=failed, stop_reason=node.stop_reason if self.speaks else None,
            env_steps=node.env_steps if self.speaks else 0)
        if part.nodes > 1 and self.speaks:
            others = [k for k in verdict.failed if k != part.node]
            self.messages.put(OtherNodes(
                self._others_steps(verdict), None if verdict.train else verdict.stop_reason,
                f"node {others[0]} failed (its part's summary says why)" if others else None))
        return verdict.train

    def after_stop(self, stop, flat: torch.Tensor) -> None:
        """In a job of several nodes that stopped cleanly: once this node's actors have stopped, one more
        exchange of every node's env steps (the job's final count), then this node's weights digest."""
        verdict = self.last
        if self.part.nodes == 1 or verdict is None or verdict.failed:
            return
        while not stop.is_set():  # its actors stop on the OtherNodes message, or already have
            if os.getppid() != self.parent:
                return  # the job's process is gone: nobody will set it
            time.sleep(STOP_POLL_S)
        final = self.ranks.agree(False, self.part.node, self.part.nodes, stop_reason=self.node.stop_reason if
                                 self.speaks else None, env_steps=self.node.env_steps if self.speaks else 0)
        if self.speaks:
            self.messages.put(OtherNodes(self._others_steps(final), weights_digest=self.ranks.digest(flat)))

    def _others_steps(self, verdict: Verdict) -> int:
        return sum(verdict.env_steps) - verdict.env_steps[self.part.node]


class _Rollouts:
    """A learner rank's side of its trajectory queue, one rollout at a time.

    Update ``r`` trains on rollout ``r``: its segments from every replica this rank serves. Replicas
    run at their own pace, so a segment of a later rollout may come first; it waits in hand (its
    slot held) until its update. The staleness gate bounds how far ahead a replica runs, and the
    queue has room for that many rollouts (``pipeline.py``)."""

    def __init__(self, traj: TrajectoryQueue, count: int, parent: int) -> None:
        self.traj, self.count, self.parent = traj, count, parent
        self.held: dict[int, list[int]] = defaultdict(list)

    def take(self, rollout: int, stop) -> list[int] | None:
        """The slots of rollout ``rollout``'s segments, or None once asked to stop, or once the job's
        process is gone (killed: nothing will set ``stop``; the ranks then learn that this node failed
        rather than wait out their timeout)."""
        while len(self.held[rollout]) < self.count:
            try:
                slot = self.traj.take(timeout=0.2)
            except queue.Empty:
                if stop.is_set() or os.getppid() != self.parent:
                    return None
                continue
            self.held[int(self.traj.arrays["rollout"][slot])].append(slot)
        return self.held.pop(rollout)
