"""The dual VRAM pool made real in a job process: long-lived tensors in a weight pool of their own,
everything per iteration in the activation pool, which has a cap.

Why two pools: the caching allocator splits its segments between whatever is alive. When the
parameters, optimizer state and staging buffers (allocated once, held to the end) sit in the same
segments as activations (freed every iteration, in sizes that change with the batch), a long-lived
block pins a segment that is otherwise free, and reserved memory creeps above allocated memory.
Here the weight pool is a ``torch.cuda.MemPool`` filled once at start; the activation pool is the
default pool, switched to expandable segments once the weights are in place (its segments grow and
shrink in pages, so changing batch sizes do not leave split blocks behind).

How the activation cap is enforced, two ways:

- **hard**: ``torch.cuda.set_per_process_memory_fraction`` limits what the process's allocator may
  reserve on the device to the job's two budgets; an allocation past it raises out-of-memory in
  this process only, so a neighbour on the same GPU never sees its memory taken;
- **per update**: after every update the activation peak (allocator peak minus the weight pool) is
  compared with the cap (:meth:`DualPool.check`), and the job fails with one line naming the pool,
  the cap and the peak (:class:`PoolOverflow`), also where the hard limit caught it as OOM.

Torch versions: ``torch.cuda.MemPool`` and ``torch.cuda.use_mem_pool`` exist from torch 2.8 (MemPool
alone from 2.5); where they are missing (older torch, or no CUDA), weights are allocated first in
the default pool (:attr:`DualPool.separate` is False), the caps are enforced the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from dvla.memsize import format_size
from dvla.spec import JobSpec
from dvlad.gpu.budgets import Budgets, job_budgets

GIB = 1 << 30


class PoolOverflow(RuntimeError):
    """A job's pool outgrew its budget; ``str()`` is the one-line reason the job fails with."""

    def __init__(self, pool: str, cap: int, peak: int, key: str):
        self.pool, self.cap, self.peak = pool, cap, peak
        super().__init__(f"{pool} pool over its cap: peak {format_size(peak)} > cap {format_size(cap)} ({key})")


def mem_pools_available() -> bool:
    """Whether this torch can allocate into a pool of its own (torch ≥ 2.8 with CUDA)."""
    return torch.cuda.is_available() and hasattr(torch.cuda, "MemPool") and hasattr(torch.cuda, "use_mem_pool")


class DualPool:
    """One process's two pools on ``device``: enter :meth:`weights` to allocate long-lived tensors,
    call :meth:`seal` once they are all in place, :meth:`check` after every update."""

    @classmethod
    def for_job(cls, spec: JobSpec, device: torch.device, *, separate: bool = True) -> DualPool:
        """A job process's pools, with the job's budgets. Without expandable segments: the weight
        plane shares its staging buffers between processes over CUDA IPC, which expandable segments
        do not support (the bench measures both). ``separate=False`` for a learner thread: a second
        MemPool entered from another thread of the actor's process aborted torch 2.11 on the H200."""
        return cls(device, job_budgets(spec), expandable=False, separate=separate)

    def __init__(self, device: torch.device, budgets: Budgets, *, expandable: bool = True, separate: bool = True):
        if device.type == "cuda" and device.index is None:  # the allocator's calls want an index
            device = torch.device("cuda", torch.cuda.current_device())
        self.device, self.budgets, self.expandable = device, budgets, expandable
        self.separate = separate and device.type == "cuda" and mem_pools_available()
        self.pool = torch.cuda.MemPool() if self.separate else None
        self.weight_bytes = 0

    @contextlib.contextmanager
    def weights(self) -> Iterator[None]:
        """Allocations inside go to the weight pool (or, without MemPool, simply come first)."""
        if self.pool is None:
            yield
            return
        with torch.cuda.use_mem_pool(self.pool, device=self.device):
            yield

    def seal(self, weight_bytes: int) -> None:
        """The weights are in place (``weight_bytes``, as :func:`dvlad.lanes.vram.tensor_bytes` counts
        them): check them against their budget, switch the activation pool to expandable segments and
        set the process's hard limit to both budgets."""
        self.weight_bytes = weight_bytes
        if self.device.type != "cuda":  # the budgets are GPU memory: a job on the CPU has no pools
            return
        if self.budgets.weight is not None and weight_bytes > self.budgets.weight:
            raise PoolOverflow("weight", self.budgets.weight, weight_bytes, "resources.weight_pool")
        if self.expandable:
            set_settings = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # torch ≥ 2.10
            (set_settings or torch.cuda.memory._set_allocator_settings)("expandable_segments:True")
        if self.budgets.activation is not None:
            total = torch.cuda.get_device_properties(self.device).total_memory
            limit = max(self.budgets.weight or 0, self.reserved_weights()) + self.budgets.activation
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), self.device)

    def reserved_weights(self) -> int:
        """Bytes the weight pool holds from the device (its segments), or the weights' own bytes."""
        if self.pool is None:
            return self.weight_bytes
        return sum(s["total_size"] for s in self.pool.snapshot())

    def activation_peak(self, peak_allocated: int) -> int:
        """The activation pool's peak out of the process's allocator peak."""
        return max(0, peak_allocated - self.weight_bytes)

    def check(self, peak_allocated: int) -> None:
        """Raise :class:`PoolOverflow` if the activation peak since the last check passed its cap."""
        cap = self.budgets.activation
        peak = self.activation_peak(peak_allocated)
        if cap is not None and peak > cap:
            raise PoolOverflow("activation", cap, peak, "resources.activation_pool")

    def overflow_from_oom(self) -> PoolOverflow | None:
        """The reason to give when the hard limit raised out-of-memory: the activation pool reached
        its cap (the allocator refused before the peak could be measured, so the peak is at least the
        cap); None without a cap (the GPU itself was full)."""
        cap = self.budgets.activation
        if cap is None or self.device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(self.device) - self.weight_bytes
        return PoolOverflow("activation", cap, max(cap, peak), "resources.activation_pool")


def adam_state_now(optimizer: torch.optim.Optimizer) -> None:
    """Make a fused Adam's state now, as its first step would (zero moments, step 0), so that it is
    allocated inside the weight pool at start rather than in the activation pool at the first update."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
