"""The weight plane: versioned policy weights from the learner to every actor replica.

Each replica has two staging buffers in shared memory. The distribute lane copies a
whole version into the buffer the actor is not reading, under that buffer's lock, then
advances the published version. The actor swaps at a batch boundary by copying the
newest buffer into its own flat parameter buffer, under the same lock. So an actor
acts with exactly one version at a time, never a half-updated mix.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

import numpy as np
import torch

from dvlad.shm import ArraySpec, SharedArrays, SharedArraysHandle


@dataclass(frozen=True)
class WeightPlaneHandle:
    arrays: SharedArraysHandle
    locks: tuple
    changed: object  # mp.Condition


class WeightPlane:
    """Staging buffers of ``replicas`` actor replicas for a model of ``numel`` float32s."""

    def __init__(self, arrays: SharedArrays, locks: tuple, changed) -> None:
        self.arrays, self.locks, self.changed = arrays, locks, changed
        self.replicas = arrays["staging"].shape[0]

    @classmethod
    def create(cls, ctx: mp.context.BaseContext, numel: int, replicas: int = 1) -> WeightPlane:
        arrays = SharedArrays({
            "staging": ArraySpec((replicas, 2, numel), "float32"),
            "slot_version": ArraySpec((replicas, 2), "int64"),
            "latest": ArraySpec((replicas,), "int64"),  # slot holding the newest version, -1 none
        })
        arrays["slot_version"].fill(-1)
        arrays["latest"].fill(-1)
        locks = tuple(tuple(ctx.Lock() for _ in range(2)) for _ in range(replicas))
        return cls(arrays, locks, ctx.Condition())

    @classmethod
    def attach(cls, handle: WeightPlaneHandle) -> WeightPlane:
        return cls(SharedArrays.attach(handle.arrays), handle.locks, handle.changed)

    @property
    def handle(self) -> WeightPlaneHandle:
        return WeightPlaneHandle(self.arrays.handle, self.locks, self.changed)

    def published_version(self, replica: int = 0) -> int:
        slot = int(self.arrays["latest"][replica])
        return -1 if slot < 0 else int(self.arrays["slot_version"][replica, slot])

    def publish(self, flat: torch.Tensor, version: int) -> float:
        """Copy ``flat`` (a CPU float32 buffer) to every replica; returns seconds spent."""
        t0 = time.perf_counter()
        src = flat.detach().numpy()
        for r in range(self.replicas):
            slot = 1 - int(self.arrays["latest"][r]) if self.arrays["latest"][r] >= 0 else 0
            with self.locks[r][slot]:
                np.copyto(self.arrays["staging"][r, slot], src)
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
            flat.copy_(torch.from_numpy(self.arrays["staging"][replica, slot]))
        return version

    def wait_for(self, version: int, timeout: float, replica: int = 0) -> bool:
        """Block until a version ≥ ``version`` is published (or the timeout passes)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.published_version(replica) >= version, timeout)

    def close(self) -> None:
        if self.arrays.owner:
            self.arrays.unlink()
        else:
            self.arrays.close()
