"""The weight plane: versioned policy weights from the learner to every actor replica.

Each replica has two staging buffers. The distribute lane copies a whole version into the
buffer the actor is not reading, under that buffer's lock, then advances the published
version. The actor swaps at a batch boundary by copying the newest buffer into its own
flat parameter buffer, under the same lock. So an actor acts with exactly one version at a
time, never a half-updated mix.

Where the staging buffers live follows the actor: host shared memory for a CPU actor, GPU
memory for a GPU actor (shared with the learner process through CUDA IPC, so a version
travels device to device and never through the host). Versions and locks are always small
host objects. Every copy is finished (its stream synchronised) before the lock is released
or the version is advertised, so no process ever sees a copy in flight.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

import torch

from dvlad.shm import ArraySpec, SharedArrays, SharedArraysHandle


@dataclass(frozen=True)
class WeightPlaneHandle:
    arrays: SharedArraysHandle
    gpu_staging: torch.Tensor | None
    """replicas×2×numel on the GPU (pickled as a CUDA IPC handle); None: staging is in ``arrays``."""
    locks: tuple
    changed: object  # mp.Condition


def _finish(t: torch.Tensor) -> None:
    """Wait for the copies queued on this thread's current stream (a GPU copy is asynchronous)."""
    if t.is_cuda:
        torch.cuda.current_stream(t.device).synchronize()


class WeightPlane:
    """Staging buffers of ``replicas`` actor replicas for a model of ``numel`` weights."""

    def __init__(self, arrays: SharedArrays, gpu_staging: torch.Tensor | None, locks: tuple, changed) -> None:
        self.arrays, self.locks, self.changed = arrays, locks, changed
        self._gpu_staging = gpu_staging
        self.staging = gpu_staging if gpu_staging is not None else torch.from_numpy(arrays["staging"])
        self.replicas = self.staging.shape[0]

    @classmethod
    def create(cls, ctx: mp.context.BaseContext, numel: int, replicas: int = 1,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WeightPlane:
        """Staging on ``device`` in ``dtype`` (the actor's): float32 host memory, or any dtype on a GPU."""
        device = torch.device(device)
        layout = {"slot_version": ArraySpec((replicas, 2), "int64"),
                  "latest": ArraySpec((replicas,), "int64")}  # slot holding the newest version, -1 none
        gpu_staging = None
        if device.type == "cuda":
            gpu_staging = torch.empty((replicas, 2, numel), device=device, dtype=dtype)
        elif dtype == torch.float32:
            layout["staging"] = ArraySpec((replicas, 2, numel), "float32")
        else:
            raise ValueError(f"host staging buffers are float32, not {dtype}")
        arrays = SharedArrays(layout)
        arrays["slot_version"].fill(-1)
        arrays["latest"].fill(-1)
        locks = tuple(tuple(ctx.Lock() for _ in range(2)) for _ in range(replicas))
        return cls(arrays, gpu_staging, locks, ctx.Condition())

    @classmethod
    def attach(cls, handle: WeightPlaneHandle) -> WeightPlane:
        return cls(SharedArrays.attach(handle.arrays), handle.gpu_staging, handle.locks, handle.changed)

    @property
    def handle(self) -> WeightPlaneHandle:
        return WeightPlaneHandle(self.arrays.handle, self._gpu_staging, self.locks, self.changed)

    @property
    def device(self) -> torch.device:
        return self.staging.device

    @property
    def dtype(self) -> torch.dtype:
        return self.staging.dtype

    def published_version(self, replica: int = 0) -> int:
        slot = int(self.arrays["latest"][replica])
        return -1 if slot < 0 else int(self.arrays["slot_version"][replica, slot])

    def publish(self, flat: torch.Tensor, version: int) -> float:
        """Copy ``flat`` (on the staging device, or the host) to every replica; returns seconds spent.

        The copy runs on the calling thread's current stream: the distribute lane calls this
        from its own thread on its own stream, beside the learner's."""
        t0 = time.perf_counter()
        src = flat.detach()
        for r in range(self.replicas):
            slot = 1 - int(self.arrays["latest"][r]) if self.arrays["latest"][r] >= 0 else 0
            with self.locks[r][slot]:
                self.staging[r, slot].copy_(src, non_blocking=True)
                _finish(self.staging)
                self.arrays["slot_version"][r, slot] = version
            self.arrays["latest"][r] = slot
        seconds = time.perf_counter() - t0  # the version is visible from here on
        with self.changed:
            self.changed.notify_all()
        return seconds

    def swap_into(self, flat: torch.Tensor, have_version: int, replica: int = 0) -> int:
        """If a newer version than ``have_version`` is published, copy it into ``flat``.

        Returns the version ``flat`` now holds. Called by the actor between batches only.
        """
        slot = int(self.arrays["latest"][replica])
        if slot < 0 or int(self.arrays["slot_version"][replica, slot]) <= have_version:
            return have_version
        with self.locks[replica][slot]:
            version = int(self.arrays["slot_version"][replica, slot])
            flat.copy_(self.staging[replica, slot], non_blocking=True)
            _finish(flat)
        return version

    def wait_for(self, version: int, timeout: float, replica: int = 0) -> bool:
        """Block until a version ≥ ``version`` is published (or the timeout passes)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.published_version(replica) >= version, timeout)

    def close(self) -> None:
        self.staging = self._gpu_staging = None  # type: ignore[assignment]  # drop views and IPC refs first
        if self.arrays.owner:
            self.arrays.unlink()
        else:
            self.arrays.close()
