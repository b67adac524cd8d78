"""Data-parallel learner ranks: one process group, gradients averaged over one flat buffer.

Why not ``DistributedDataParallel``: the policy's trainable weights already live in one flat
buffer (the one the weight plane publishes), and the learner calls ``policy.evaluate``, not
``forward``, which DDP's reducer does not see. So this does what DDP does with a single bucket: the
parameters' ``.grad`` are views of one flat gradient buffer, and after each minibatch's backward
the ranks all-reduce it once (Gloo between CPU ranks, NCCL between GPUs), weighted by how many
valid samples each rank's minibatch held, so that the step equals one rank's step on all of them.
Every rank then takes the same optimizer step from the same weights and stays identical to the
others, bit for bit.

Every rank must run the same number of all-reduces per update: the learner splits its rows into
exactly ``algo.minibatches`` minibatches, and a rank whose minibatch is empty still joins with a
zero gradient and a zero weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = timedelta(minutes=10)
"""How long a rank waits for the others in one collective before the job fails (a rank that died
ends the job sooner: the pipeline watches every rank's process)."""


class LearnerRanks:
    """This process's place among ``world`` learner ranks, joined at ``rendezvous``
    (``tcp://HOST:PORT``, the job's main process chooses it)."""

    def __init__(self, rank: int, world: int, rendezvous: str, device: torch.device, backend: str = "gloo") -> None:
        self.rank, self.world, self.device, self.backend = rank, world, device, backend
        dist.init_process_group(self.backend, init_method=rendezvous, rank=rank, world_size=world, timeout=TIMEOUT,
                                **({"device_id": device} if self.backend == "nccl" else {}))
        self.grads: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None

    def bind(self, params: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
        """Make ``params``' gradients views of one buffer shaped like ``flat`` (the flat weights they
        are views of, in the same order: :func:`dvlad.policies.base.flatten_parameters`)."""
        self.grads = torch.zeros_like(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = self.grads[offset:offset + n].view_as(p)
            offset += n
        if offset != flat.numel():
            raise ValueError(f"parameters hold {offset} weights, the flat buffer {flat.numel()}")

    def average_gradients(self, samples: int) -> int:
        """Replace this rank's gradient (from ``samples`` valid samples) by the samples-weighted mean
        of every rank's; returns the samples of all ranks (0: nobody had any, skip the step)."""
        assert self.grads is not None, "bind() first"
        self.grads.mul_(samples)
        dist.all_reduce(self.grads)
        total = int(self.all_sum([float(samples)])[0])
        if total:
            self.grads.div_(total)
        return total

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (counts, histograms)."""
        t = torch.tensor(list(values), dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def check_identical(self, flat: torch.Tensor, version: int) -> None:
        """Raise unless every rank holds the same weights: two weighted sums of ``flat`` (in float64,
        reduced the same way on every rank) compared across the ranks, once per update."""
        if self._positions is None or self._positions.numel() != flat.numel():
            self._positions = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
        weights = flat.detach().double()
        digest = torch.stack([weights.sum(), (weights * self._positions).sum()])
        if self.backend != "nccl":
            digest = digest.cpu()
        digests = [torch.empty_like(digest) for _ in range(self.world)]
        dist.all_gather(digests, digest)
        if any(not torch.equal(d, digests[0]) for d in digests):
            raise RuntimeError(f"learner ranks diverged at version {version}: weight digests "
                               f"{[d.tolist() for d in digests]}")

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` on every rank with rank 0's (the weights a resumed job starts from)."""
        dist.broadcast(tensor, src=0)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
