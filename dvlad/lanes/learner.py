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

import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dvla.checkpoint import CHECKPOINT_NAME
from dvla.spec import JobSpec
from dvlad.lanes.device import CPU, LEARNER_PRIORITY, Placement, placement_for
from dvlad.lanes.distribute import Distributor
from dvlad.lanes.trajectory import TrajectoryQueue, TrajectoryQueueHandle
from dvlad.lanes.vram import LEARNER_PEAK, LEARNER_WEIGHTS, peak_allocated, tensor_bytes
from dvlad.lanes.weights import Published, WeightPlane, WeightPlaneHandle
from dvlad.policies import build_policy
from dvlad.policies.base import ObsBatch
from dvlad.policies.checkpoint import load_weights, optimizer_state, save_training_checkpoint
from dvlad.rl import gae, group_relative_advantages, grpo_loss, normalize_advantages, ppo_loss
from dvlad.spaces import EnvSpec


@dataclass(frozen=True)
class LearnerConfig:
    spec: JobSpec
    env_spec: EnvSpec
    output_dir: str


def _batch_from_segments(segments: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Copy segments (shared-memory views) out, stacked along a new segment axis [S, ...]."""
    return {k: torch.from_numpy(np.stack([s[k] for s in segments])) for k in segments[0]}


def _obs(batch: dict[str, torch.Tensor], index: tuple | torch.Tensor) -> ObsBatch:
    """The observations at ``index`` of a batch (a segment slice, or rows of the flattened batch)."""
    return ObsBatch(images={k.split("/", 1)[1]: v[index] for k, v in batch.items() if k.startswith("image/")},
                    proprio=batch["proprio"][index], instruction=batch["instruction"][index])


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[S, T, E, ...] -> [S·T·E, ...]"""
    return x.reshape(-1, *x.shape[3:])


class Learner:
    """The optimisation half of the learn lane, without any process plumbing (testable)."""

    def __init__(self, cfg: LearnerConfig, placement: Placement = CPU) -> None:
        self.cfg, self.algo, self.placement = cfg, cfg.spec.algo, placement
        self.device = placement.device
        self.policy, self.flat = build_policy(cfg.spec, cfg.env_spec, self.device, placement.learner_dtype)
        # Adam without weight decay (CleanRL's eps); on a GPU the fused kernel: one launch per step
        self.optimizer = torch.optim.Adam(self.policy.published_parameters(), lr=self.algo.learning_rate,
                                          eps=1e-5, fused=placement.on_gpu)
        self.version = 0
        self.trained_env_steps = 0
        self.checkpoint_path = Path(cfg.output_dir) / CHECKPOINT_NAME
        if cfg.spec.policy.checkpoint:
            load_weights(self.flat, Path(cfg.spec.policy.checkpoint))
        if cfg.spec.train.resume and self.checkpoint_path.exists():
            self.restore(self.checkpoint_path)

    # -- updates --------------------------------------------------------------------------
    def update(self, segments: list[dict[str, np.ndarray]]) -> dict[str, float]:
        """One rollout in, one new version out. Returns the update's statistics."""
        return self.train(_batch_from_segments(segments))

    def train(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One update on a rollout already stacked by :func:`_batch_from_segments`."""
        staleness = (self.version - b["version"])[b["valid"]]
        b = {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
        valid = b["valid"]
        if self.algo.name == "grpo":
            advantages, returns = self._grpo_advantages(b), None
        else:
            advantages, returns = self._gae(b)
        idx = torch.nonzero(_flat(valid), as_tuple=True)[0]
        n = len(idx)
        stats: dict[str, float] = {}
        if n:
            obs_rows = {k: _flat(v[:, :-1]) if k.startswith("image/") or k in ("proprio", "instruction", "aux")
                        else _flat(v) for k, v in b.items() if v.dim() >= 3}
            stats = self._optimise(obs_rows, idx, _flat(advantages), None if returns is None else _flat(returns))
        self.version += 1
        steps = int(b["env_steps"][valid].sum())
        self.trained_env_steps += steps
        hist = np.bincount(staleness.numpy().clip(0), minlength=1)
        stats.update(samples=float(n), trained_env_steps=float(self.trained_env_steps),
                     staleness_mean=float(staleness.float().mean()) if n else 0.0,
                     staleness_max=float(staleness.max()) if n else 0.0)
        stats["staleness_hist"] = hist.tolist()  # type: ignore[assignment]
        return stats

    def _gae(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self.placement.autocast():
            last = _obs(b, (slice(None), -1))
            s, e = last.proprio.shape[:2]
            bootstrap = self.policy.value(ObsBatch(
                images={k: v.reshape(s * e, *v.shape[2:]) for k, v in last.images.items()},
                proprio=last.proprio.reshape(s * e, -1),
                instruction=last.instruction.reshape(s * e, -1))).reshape(s, e)
        advs, rets = [], []
        for i in range(s):  # per segment: [T, E]
            a, r = gae(b["reward"][i], b["value"][i], b["done"][i].float(), bootstrap[i],
                       self.algo.gamma, self.algo.gae_lambda)
            advs.append(a)
            rets.append(r)
        return torch.stack(advs), torch.stack(rets)

    def _grpo_advantages(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Binary success of each episode, relative to the episodes that shared its start."""
        s, t, e = b["valid"].shape
        scores = (b["success"] & b["valid"]).any(dim=1).float()  # [S, E]
        arange = torch.arange(max(s, e), device=scores.device)
        group_ids = (arange[:s, None] * e + arange[None, :e]) // self.algo.group_size
        adv = group_relative_advantages(scores.reshape(-1), group_ids.reshape(-1)).reshape(s, 1, e)
        return adv.expand(s, t, e)

    def _optimise(self, rows: dict[str, torch.Tensor], idx: torch.Tensor, advantages: torch.Tensor,
                  returns: torch.Tensor | None) -> dict[str, float]:
        algo, totals, count = self.algo, {}, 0
        mb_size = max(1, len(idx) // algo.minibatches)
        proximal = self._proximal_logprob(rows, idx, mb_size) if algo.proximal_clip else None
        for _ in range(algo.update_epochs):
            perm = idx[torch.randperm(len(idx), device=idx.device)]
            for start in range(0, len(perm), mb_size):
                mb = perm[start:start + mb_size]
                with self.placement.autocast():
                    out = self.policy.evaluate(_obs(rows, mb), rows["tokens"][mb])
                adv = advantages[mb]
                if algo.norm_adv and algo.name == "ppo":
                    adv = normalize_advantages(adv, torch.ones(len(mb), device=self.device))
                # token-level surrogate: every action token is a sample sharing its step's advantage
                per_token = out.logprob.shape[1]

                def tok(x: torch.Tensor, n: int = per_token) -> torch.Tensor:
                    return x.repeat_interleave(n)

                mask = torch.ones(len(mb) * per_token, device=self.device)
                prox = None if proximal is None else proximal[mb].flatten()
                if returns is None:
                    loss, stats = grpo_loss(out.logprob.flatten(), rows["logprob"][mb].flatten(), tok(adv),
                                            out.entropy.flatten(), mask, clip_coef=algo.clip_coef,
                                            ratio_cap=algo.ratio_cap, ent_coef=algo.ent_coef,
                                            proximal_logprob=prox)
                else:
                    loss, stats = ppo_loss(out.logprob.flatten(), rows["logprob"][mb].flatten(), tok(adv),
                                           tok(out.value), tok(rows["value"][mb]), tok(returns[mb]),
                                           out.entropy.flatten(), mask, clip_coef=algo.clip_coef,
                                           ratio_cap=algo.ratio_cap, vf_coef=algo.vf_coef,
                                           ent_coef=algo.ent_coef, proximal_logprob=prox)
                if algo.aux_coef and out.aux is not None and "aux" in rows:
                    aux_loss = self.policy.aux_loss(out.aux, rows["aux"][mb])
                    loss = loss + algo.aux_coef * aux_loss
                    stats["aux_loss"] = float(aux_loss.detach())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(),
                                                                          algo.max_grad_norm))
                self.optimizer.step()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
        return {k: v / count for k, v in totals.items()}

    def _proximal_logprob(self, rows: dict[str, torch.Tensor], idx: torch.Tensor, chunk: int) -> torch.Tensor:
        """Log-probs of the sampled tokens under the weights as this update begins (decoupled
        PPO's proximal policy), for every row; rows outside ``idx`` stay 0 and are never read."""
        out = torch.zeros(rows["logprob"].shape, device=self.device)
        with torch.no_grad(), self.placement.autocast():
            for start in range(0, len(idx), chunk):
                rows_mb = idx[start:start + chunk]
                out[rows_mb] = self.policy.evaluate(_obs(rows, rows_mb), rows["tokens"][rows_mb]).logprob.float()
        return out

    def gpu_memory(self, own_process: bool) -> dict[str, int]:
        """The weight pool this learner holds (weights and optimizer state; the gradients are
        freed and made again every minibatch, so they count with the activations) and, when it is
        a process of its own, its allocator's peak since the last update (``vram.py``)."""
        state = [t for st in self.optimizer.state.values() for t in st.values() if torch.is_tensor(t) and t.is_cuda]
        params = list(self.policy.parameters())  # frozen ones (LoRA's trunk) too; views of flat count once
        out = {LEARNER_WEIGHTS: tensor_bytes([*params, *self.policy.buffers(), *state])}
        if own_process:
            out[LEARNER_PEAK] = peak_allocated(self.device)
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path: Path | None = None) -> Path:
        """Weights, optimizer state and counters in one safetensors file, written atomically."""
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
                 messages, stop) -> None:
    """Entry point of the learn lane, a process of its own or a thread of the actor's process
    (``Placement.learner_thread``). Talks to the job by small messages only."""
    placement = placement_for(cfg.spec)  # the job has checked it before starting the lane
    if not placement.learner_thread:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job's process decides how to stop
        torch.set_num_threads(cfg.spec.resources.torch_threads)
    with placement.lane_stream(LEARNER_PRIORITY):
        _learn(cfg, placement, queue_handle, plane_handle, messages, stop)


def _learn(cfg: LearnerConfig, placement: Placement, queue_handle: TrajectoryQueueHandle,
           plane_handle: WeightPlaneHandle, messages, stop) -> None:
    traj = plane = distributor = None
    try:
        learner = Learner(cfg, placement)
        traj, plane = TrajectoryQueue.attach(queue_handle), WeightPlane.attach(plane_handle)

        def published(version: int, t0: float, published: Published) -> None:
            messages.put(("interval", "distribute", t0, t0 + published.seconds, 1))

        distributor = Distributor(plane, placement.device, on_published=published)
        distributor.publish(learner.flat, learner.version)
        messages.put(("ready", learner.version, learner.trained_env_steps, os.getpid()))
        every = cfg.spec.train.checkpoint_every
        while not stop.is_set():
            slots = _take(traj, cfg.spec.env.groups, stop)
            if slots is None:
                break
            t0 = time.monotonic()
            batch = _batch_from_segments([traj.view(s) for s in slots])  # the one copy out of shm
            for s in slots:  # free the slots at once: the actor may refill them while we train
                traj.release(s)
            distributor.flush()  # the last version has left the weights: the update may write them
            stats = learner.train(batch)
            t1 = time.monotonic()
            distributor.publish(learner.flat, learner.version)
            stats["learn_s"] = t1 - t0
            if placement.on_gpu:
                stats.update(learner.gpu_memory(own_process=not placement.learner_thread))
            messages.put(("interval", "learn", t0, t1, int(stats["samples"])))
            messages.put(("update", learner.version, stats))
            if every and learner.version % every == 0:
                messages.put(("checkpoint", str(learner.save()), learner.version))
        messages.put(("checkpoint", str(learner.save()), learner.version))
        distributor.close()
    except BaseException:
        messages.put(("error", traceback.format_exc()))
    finally:
        for part in (traj, plane):
            if part is not None:
                part.close()


def _take(traj: TrajectoryQueue, count: int, stop) -> list[int] | None:
    """The next ``count`` segments (one rollout), or None once asked to stop."""
    slots: list[int] = []
    while len(slots) < count:
        try:
            slots.append(traj.take(timeout=0.2))
        except queue.Empty:
            if stop.is_set():
                for s in slots:
                    traj.release(s)
                return None
    return slots
