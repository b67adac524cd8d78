"""The policy interface the lanes drive, and the flat weight buffer the weight plane copies.

Why a flat buffer: the distribute lane publishes a version by copying one contiguous
tensor (one memcpy on the host, one device copy on a GPU), never a state dict walked
parameter by parameter, so an actor can never see half of a version.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ObsBatch:
    """A batch of observations as tensors, the form every policy consumes."""

    images: dict[str, torch.Tensor]
    """camera name -> uint8 tensor B×H×W×3."""
    proprio: torch.Tensor
    """float32 B×P."""
    instruction: torch.Tensor
    """int64 B×L instruction token ids from :meth:`Policy.tokenize` (0 = padding)."""

    def to(self, device: torch.device | str) -> ObsBatch:
        return ObsBatch(
            images={k: v.to(device, non_blocking=True) for k, v in self.images.items()},
            proprio=self.proprio.to(device, non_blocking=True),
            instruction=self.instruction.to(device, non_blocking=True),
        )


@dataclass
class ActOutput:
    tokens: torch.Tensor
    """int64 B×K×7 action tokens (K = action chunk length)."""
    actions: torch.Tensor
    """float32 B×K×7 continuous actions in [-1, 1], decoded from the tokens."""
    logprob: torch.Tensor
    """float32 B×(K·7): log-probability of each action token under the acting policy
    (the learner's ratios are per token, as LLM-style VLA RL computes them)."""
    value: torch.Tensor
    """float32 B: value estimate of the observation."""


@dataclass
class EvalOutput:
    logprob: torch.Tensor
    """float32 B×(K·7): log-probability of each given token."""
    entropy: torch.Tensor
    """float32 B×(K·7): entropy of each token's distribution."""
    value: torch.Tensor
    """float32 B."""
    aux: torch.Tensor | None = None
    """The policy's prediction of the env's auxiliary labels, in whatever form its
    :meth:`Policy.aux_loss` scores (None: the policy predicts none)."""


def check_observation(obs: ObsBatch, cameras: list[str], max_instruction_tokens: int) -> None:
    """Refuse an observation a policy was not built for: a longer instruction or a missing camera."""
    if obs.instruction.shape[1] > max_instruction_tokens:
        raise ValueError(f"instruction has {obs.instruction.shape[1]} tokens, max is {max_instruction_tokens}")
    missing = [name for name in cameras if name not in obs.images]
    if missing:
        raise KeyError(f"observation lacks camera(s) {sorted(missing)}")


class Policy(nn.Module, ABC):
    """A VLA policy: observations and instruction in, discrete action tokens out, plus a value."""

    action_chunk: int
    """Number of consecutive actions emitted per inference (executed in order by the env)."""
    max_instruction_tokens: int

    @abstractmethod
    def tokenize(self, instructions: list[str]) -> torch.Tensor:
        """Instruction strings -> int64 B×L token ids. Pure CPU work; the actor caches it."""

    @abstractmethod
    def act(self, obs: ObsBatch, deterministic: bool = False) -> ActOutput:
        """Sample (or take the mode of) an action chunk for every observation."""

    @abstractmethod
    def evaluate(self, obs: ObsBatch, tokens: torch.Tensor) -> EvalOutput:
        """Log-prob, entropy and value of given action tokens under the current weights."""

    @abstractmethod
    def value(self, obs: ObsBatch) -> torch.Tensor:
        """Value estimate only (used to bootstrap a segment's last observation)."""

    def published_parameters(self) -> list[nn.Parameter]:
        """The parameters a weight version carries from the learner to the actors: all of them
        unless the policy freezes a part that every process builds identically (a LoRA trunk's
        base weights), which then never travels. :func:`flatten_parameters` flattens exactly these."""
        return list(self.parameters())

    def aux_loss(self, prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Auxiliary loss of ``EvalOutput.aux`` against the env's labels B×aux_dim. Mean squared
        error unless the policy knows a better form for its prediction."""
        return torch.nn.functional.mse_loss(prediction, labels)


def flatten_parameters(module: nn.Module) -> torch.Tensor:
    """Move the published parameters of ``module`` into one contiguous buffer and return it.

    A :class:`Policy` publishes :meth:`Policy.published_parameters`, any other module all its
    parameters. Each one's ``.data`` becomes a view into the buffer, so copying a new buffer in
    updates the whole published model at once. Call before building an optimizer.
    """
    params = module.published_parameters() if isinstance(module, Policy) else list(module.parameters())
    if not params:
        raise ValueError("module has no parameters to flatten")
    dtype, device = params[0].dtype, params[0].device
    odd = {(p.dtype, p.device) for p in params} - {(dtype, device)}
    if odd:
        raise ValueError(f"published parameters mix dtypes/devices: {dtype}, {device} and {sorted(map(str, odd))}")
    flat = torch.empty(sum(p.numel() for p in params), dtype=dtype, device=device)
    offset = 0
    for p in params:
        n = p.numel()
        flat[offset : offset + n].copy_(p.data.reshape(-1))
        p.data = flat[offset : offset + n].view_as(p.data)
        offset += n
    return flat
