"""A transformer-vla job's GPU memory traffic in one process, for bench_vram.py and calibrate_vram.py.

The pieces of an RL iteration that touch GPU memory, with the job's own policy: an actor replica
acting on rollout batches, rollout tensors held until the update, a learner taking clipped-loss
gradient steps over minibatches with Adam, and a weight publication (learner -> staging buffer ->
actor replica). What is long-lived (both replicas, Adam state, staging) is built by :func:`build`
inside the caller's weight-pool context; everything else is per iteration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dvlad.lanes.vram import tensor_bytes
from dvlad.policies.base import ObsBatch
from dvlad.policies.transformer_vla import TransformerVLA
from dvlad.spaces import ACTION_DIM, EnvSpec

LORA = {"r": 16}


def env_spec(image_size: int = 128, cameras: int = 2, proprio_dim: int = 8) -> EnvSpec:
    names = ["agentview", "wrist", "left", "right"][:cameras]
    return EnvSpec({n: (image_size, image_size) for n in names}, proprio_dim, 100)


@dataclass
class Job:
    learner: TransformerVLA
    actor: TransformerVLA
    optimizer: torch.optim.Optimizer
    staging: torch.Tensor
    spec: EnvSpec
    device: torch.device

    def weight_bytes(self) -> int:
        """What the weight pool holds: both replicas, Adam's state and the staging buffer."""
        state = [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return tensor_bytes([*self.learner.parameters(), *self.learner.buffers(), *self.actor.parameters(),
                             *self.actor.buffers(), *state, self.staging])


def build(preset: str, lora: bool, patch: int, device: torch.device, spec: EnvSpec,
          weights: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Job:
    """As a job on a GPU holds them (dvlad/lanes/device.py): the learner's fp32 master weights with
    fused Adam (its state made now, by one step of zero gradients, so that it is long-lived from
    the start as in a job), the actor's bf16 replica and the bf16 staging buffer. Only these are
    allocated inside ``weights()`` (the weight pool's context): the zero gradients are not, and
    the actor is built in bf16 rather than copied and cast, so no freed block is left behind there."""
    torch.manual_seed(0)
    args = {"preset": preset, "patch_size": patch, "lora": LORA if lora else None}
    with device, weights():  # built in place: a 1B model initialised on the host would take a while
        learner = TransformerVLA(spec, dtype="float32", **args)
        actor = TransformerVLA(spec, dtype="bfloat16", **args).requires_grad_(False)
        actor.load_state_dict(learner.state_dict())
    trainable = learner.published_parameters()
    optimizer = torch.optim.Adam(trainable, lr=1e-5, eps=1e-5, fused=device.type == "cuda")
    for p in trainable:
        p.grad = torch.zeros_like(p)
    with weights():
        optimizer.step()
        staging = torch.empty(sum(p.numel() for p in trainable), dtype=torch.bfloat16, device=device)
    optimizer.zero_grad(set_to_none=True)
    return Job(learner, actor, optimizer, staging, spec, device)


def observations(job: Job, batch: int, gen: torch.Generator) -> ObsBatch:
    d = job.device
    images = {n: torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=gen).to(d)
              for n, (h, w) in job.spec.cameras.items()}
    proprio = torch.randn(batch, job.spec.proprio_dim, generator=gen).to(d)
    instruction = torch.randint(1, 1000, (batch, job.actor.max_instruction_tokens), generator=gen).to(d)
    return ObsBatch(images, proprio, instruction)


def autocast(job: Job) -> contextlib.AbstractContextManager:
    """bf16 autocast on the GPU, as the job's actor and learner compute."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=job.device.type == "cuda")


def tokens_per_observation(job: Job) -> int:
    return (sum((h // job.learner.vision[0].patchify.stride[0]) * (w // job.learner.vision[0].patchify.stride[1])
                for h, w in job.spec.cameras.values())
            + 1 + job.learner.max_instruction_tokens + job.learner.queries.shape[0])


@torch.no_grad()
def rollout(job: Job, envs: int, steps: int, gen: torch.Generator) -> list[tuple[ObsBatch, torch.Tensor]]:
    """``steps`` actor batches of ``envs`` observations, kept (as a rollout is) until the update."""
    out = []
    for _ in range(steps):
        obs = observations(job, envs, gen)
        with autocast(job):
            out.append((obs, job.actor.act(obs).tokens))
    return out


def learner_step(job: Job, obs: ObsBatch, tokens: torch.Tensor) -> None:
    """One minibatch: the policy's evaluate, a clipped-ratio loss with a value term, Adam."""
    with autocast(job):
        ev = job.learner.evaluate(obs, tokens)
    ratio = ev.logprob.sum(-1).sub(ev.logprob.sum(-1).detach()).exp()
    adv = torch.randn_like(ratio)
    loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean() + 0.5 * ev.value.square().mean() \
        - 0.01 * ev.entropy.mean()
    loss.backward()
    job.optimizer.step()
    job.optimizer.zero_grad(set_to_none=True)


def update(job: Job, data: list[tuple[ObsBatch, torch.Tensor]], minibatches: int) -> None:
    """The learner over the rollout: concatenated, shuffled, split into ``minibatches``."""
    obs = ObsBatch({n: torch.cat([o.images[n] for o, _ in data]) for n in job.spec.cameras},
                   torch.cat([o.proprio for o, _ in data]), torch.cat([o.instruction for o, _ in data]))
    tokens = torch.cat([t for _, t in data]).view(-1, job.learner.action_chunk, ACTION_DIM)
    perm = torch.randperm(tokens.shape[0], device=job.device)
    for idx in torch.tensor_split(perm, minibatches):
        learner_step(job, ObsBatch({n: v[idx] for n, v in obs.images.items()}, obs.proprio[idx],
                                   obs.instruction[idx]), tokens[idx])


@torch.no_grad()
def publish(job: Job) -> None:
    """Learner -> staging buffer -> actor replica, as the weight plane copies a version."""
    offset = 0
    for p in job.learner.published_parameters():
        job.staging[offset:offset + p.numel()].copy_(p.flatten())
        offset += p.numel()
    offset = 0
    pairs = zip(job.actor.parameters(), job.learner.parameters(), strict=True)
    for p in [a for a, learned in pairs if learned.requires_grad]:  # the actor's replica is frozen
        p.copy_(job.staging[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


@contextlib.contextmanager
def peak_of(device: torch.device):
    """Yields a dict whose ``"peak"`` is, after the block, the allocator's peak above what was
    allocated when it started (the block's transient bytes)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = {"base": base}
    yield result
    torch.cuda.synchronize(device)
    result["peak"] = torch.cuda.max_memory_allocated(device) - base
