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

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from dvla import stops

TIMEOUT = timedelta(minutes=10)
"""How long a rank of a one-node job waits for the others in one collective before the job fails (a
rank that died ends the job sooner: the pipeline watches every rank's process). A job of several
nodes waits ``placement.collective_timeout_s``: it cannot watch the other nodes' processes."""


class PeersGone(RuntimeError):
    """A collective failed: a rank it waited for died, or stayed silent past the timeout."""


@dataclass(frozen=True)
class Verdict:
    """What the ranks agreed before an update (:meth:`LearnerRanks.agree`), the same on every rank."""

    train: bool
    """Every rank holds its rollout: all train this update; False: all stop now."""
    failed: tuple[int, ...]
    """The nodes whose part is failing (the job fails on every node)."""
    stop_reason: str | None
    """Why the lowest node that stopped by itself stopped (:mod:`dvla.stops`)."""
    env_steps: tuple[int, ...]
    """Each node's env steps sampled, as its main process last told its local rank 0."""


class LearnerRanks:
    """This process's place among ``world`` learner ranks, joined at ``rendezvous``
    (``tcp://HOST:PORT``: the job's main process chooses it, or for a job of several nodes the
    coordinating dvlad); ``others`` names whose ranks a failed collective waited for ("node 1's ranks")."""

    def __init__(self, rank: int, world: int, rendezvous: str, device: torch.device, backend: str = "gloo",
                 timeout: timedelta = TIMEOUT, others: str = "another learner rank") -> None:
        self.rank, self.world, self.device, self.backend, self.others = rank, world, device, backend, others
        self.grads: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self.collective_s = 0.0
        """Seconds spent in collectives since :meth:`take_collective_s` (waits for the others included)."""
        with self._collective(f"did not join within {timeout.total_seconds():g} s"):
            dist.init_process_group(self.backend, init_method=rendezvous, rank=rank, world_size=world,
                                    timeout=timeout, **({"device_id": device} if self.backend == "nccl" else {}))

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
        with self._collective():
            dist.all_reduce(self.grads)
        total = int(self.all_sum([float(samples)])[0])
        if total:
            self.grads.div_(total)
        return total

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (counts, histograms)."""
        t = torch.tensor(list(values), dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        with self._collective():
            dist.all_reduce(t)
            return t.tolist()  # NCCL: the wait for the result counts as the collective's

    def agree(self, ready: bool, node: int, nodes: int, *, failed: bool = False, stop_reason: str | None = None,
              env_steps: int = 0) -> Verdict:
        """One all-reduce before each update that keeps every rank running the same collectives:
        whether this rank holds its rollout (``ready``), whether its node's part is failing, and, from
        each node's local rank 0 alone (the others give None and 0), why its node stopped and the
        env steps its node sampled. Float64 counts env steps exactly up to 2⁵³."""
        mine = [0.0] * nodes
        mine[node] = 1.0
        code = 0.0 if stop_reason is None else 1.0 + stops.STOP_REASONS.index(stop_reason)
        summed = self.all_sum([float(ready), *(f * failed for f in mine), *(f * code for f in mine),
                               *(f * env_steps for f in mine)])
        failing, codes, steps = summed[1:1 + nodes], summed[1 + nodes:1 + 2 * nodes], summed[1 + 2 * nodes:]
        code = next((int(c) for c in codes if c), 0)
        return Verdict(train=summed[0] == self.world, failed=tuple(k for k, f in enumerate(failing) if f),
                       stop_reason=stops.STOP_REASONS[code - 1] if code else None,
                       env_steps=tuple(int(s) for s in steps))

    def check_identical(self, flat: torch.Tensor, version: int) -> None:
        """Raise unless every rank holds the same weights: two weighted sums of ``flat`` (in float64,
        reduced the same way on every rank) compared across the ranks, once per update."""
        digests = self._gather(self._digest(flat))
        if any(not torch.equal(d, digests[0]) for d in digests):
            raise RuntimeError(f"learner ranks diverged at version {version}: weight digests "
                               f"{[d.tolist() for d in digests]}")

    def check_same_start(self, version: int, trained_env_steps: int) -> None:
        """Raise unless every rank starts from the same version (a resume needs the same checkpoint on
        every node: only the one with global rank 0 writes it)."""
        starts = [tuple(int(x) for x in t.tolist()) for t in self._gather(
            torch.tensor([version, trained_env_steps], dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu"))]
        if len(set(starts)) > 1:
            raise ValueError(f"the learner ranks start from different checkpoints: (version, trained env steps) "
                             f"by rank {starts}; a job of several nodes resumes only with rank 0's checkpoint "
                             "in every node's output directory")

    def digest(self, flat: torch.Tensor) -> tuple[float, float]:
        """The two numbers :meth:`check_identical` compares, for a summary (:func:`weights_digest`)."""
        return weights_digest(flat, self._positions_for(flat))

    def _digest(self, flat: torch.Tensor) -> torch.Tensor:
        digest = torch.tensor(self.digest(flat), dtype=torch.float64)
        return digest.to(flat.device) if self.backend == "nccl" else digest

    def _positions_for(self, flat: torch.Tensor) -> torch.Tensor:
        if self._positions is None or self._positions.numel() != flat.numel():
            self._positions = digest_positions(flat)
        return self._positions

    def _gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world)]
        with self._collective():
            dist.all_gather(out, t)
        return out

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` on every rank with rank 0's (the weights a resumed job starts from)."""
        with self._collective():
            dist.broadcast(tensor, src=0)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    @contextlib.contextmanager
    def _collective(self, what: str = "went away") -> Iterator[None]:
        """A failed collective as :class:`PeersGone`, naming whose ranks it waited for and with the
        backend's first line (Gloo's "Connection closed by peer", a timeout)."""
        t0 = time.monotonic()
        try:
            yield
        except RuntimeError as exc:  # DistBackendError, DistNetworkError, DistStoreError are RuntimeErrors
            said = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise PeersGone(f"{self.others} {what}: {said}") from exc
        finally:
            self.collective_s += time.monotonic() - t0

    def take_collective_s(self) -> float:
        """The seconds spent in collectives since the last call."""
        seconds, self.collective_s = self.collective_s, 0.0
        return seconds


def digest_positions(flat: torch.Tensor) -> torch.Tensor:
    """The weights of :func:`weights_digest`'s second sum: 1 … 2 along the buffer."""
    return torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)


def weights_digest(flat: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[float, float]:
    """Two float64 sums of the flat weights, plain and weighted by position: equal on two ranks (or in
    a checkpoint and a node's summary) when the weights are, and a swap or a nudge shows. Cheap where a
    hash of a large model would take seconds."""
    weights = flat.detach().double()
    positions = digest_positions(flat) if positions is None else positions
    return float(weights.sum()), float((weights * positions).sum())
