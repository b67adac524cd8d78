"""The weight plane: versioned policy weights from the learner to every actor replica.

Each replica has two staging buffers. The distribute lane copies a whole version into the
buffer the actor is not reading, under that buffer's lock, then advances the published
version. The actor swaps at a batch boundary by copying the newest buffer into its own
flat parameter buffer, under the same lock. So an actor acts with exactly one version at a
time, never a half-updated mix.

An actor waiting for a version sleeps on its replica's doorbell, a semaphore the publisher
releases once per version. Not a ``multiprocessing.Condition``: its ``notify_all`` waits for
every sleeper to wake, so an actor killed in its sleep (a node's process killed, SIGKILL from
the OOM killer) would hang the learner's next publication for ever, and with it the learner.

Where the staging buffers live follows the actors: host shared memory for CPU actors, each
replica's own GPU for GPU actors (shared with the learner's process through CUDA IPC, so a version
travels device to device and never through the host). Versions and locks are always small host
objects. Every copy is finished (its streams synchronised) before the lock is released or the
version is advertised, so no process ever sees a copy in flight.

A version travels by **routes**: each copies a whole version into one replica's staging, from
the publisher's weights or from a replica that received it earlier in the same publication (the
replication plan, :mod:`dvlad.gpu.replication`). On GPUs a route runs chunk by chunk on a stream
of its own, each chunk waiting only for the same chunk to reach its source: the copies of a tree
pipeline, and a version takes about one transfer over its slowest path rather than one per hop.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dvlad.shm import ArraySpec, SharedArrays, SharedArraysHandle

CHUNK_BYTES = 64 << 20
"""Bytes per chunk of a pipelined GPU route: small enough that a tree's hops overlap, large
enough that each copy runs at its link's full speed."""


@dataclass(frozen=True)
class Route:
    """One copy of a version: into replica ``dst``'s staging, from replica ``src``'s (which got it
    earlier in the same publication) or, with ``src`` None, from the publisher's weights."""

    src: int | None
    dst: int


@dataclass(frozen=True)
class Published:
    """How long a publication took: until every replica had it, and until each one did."""

    seconds: float
    replica_seconds: dict[int, float]


@dataclass(frozen=True)
class WeightPlaneHandle:
    arrays: SharedArraysHandle
    gpu_staging: tuple[torch.Tensor, ...]
    """Per replica, its 2×numel staging on its GPU (pickled as CUDA IPC handles); empty: the staging
    is host memory in ``arrays``."""
    locks: tuple
    doorbells: tuple
    """Per replica, an ``mp.Semaphore`` released once per version published to it."""


class WeightPlane:
    """Staging buffers of one actor replica per device, for a model of ``numel`` weights."""

    def __init__(self, arrays: SharedArrays, gpu_staging: tuple[torch.Tensor, ...], locks: tuple,
                 doorbells: tuple) -> None:
        self.arrays, self.locks, self.doorbells = arrays, locks, doorbells
        self._gpu_staging = gpu_staging
        self.staging: list[torch.Tensor] = (list(gpu_staging) if gpu_staging
                                            else list(torch.from_numpy(arrays["staging"])))
        """Per replica: its two buffers, [2, numel]."""
        self.replicas = len(self.staging)
        self._streams: dict[Route, torch.cuda.Stream] = {}

    @classmethod
    def create(cls, ctx: mp.context.BaseContext, numel: int, devices: Sequence[torch.device | str] = ("cpu",),
               dtype: torch.dtype = torch.float32) -> WeightPlane:
        """One replica per entry of ``devices`` (all CPU, or all GPUs): float32 host memory, or the
        replica's GPU in any dtype (the actors')."""
        devices = [torch.device(d) for d in devices]
        replicas = len(devices)
        kinds = {d.type for d in devices}
        if len(kinds) != 1:
            raise ValueError(f"replicas are all on GPUs or all on the CPU, not {[str(d) for d in devices]}")
        layout = {"slot_version": ArraySpec((replicas, 2), "int64"),
                  "latest": ArraySpec((replicas,), "int64")}  # slot holding the newest version, -1 none
        gpu_staging: tuple[torch.Tensor, ...] = ()
        if kinds == {"cuda"}:
            gpu_staging = tuple(torch.empty((2, numel), device=d, dtype=dtype) for d in devices)
        elif dtype == torch.float32:
            layout["staging"] = ArraySpec((replicas, 2, numel), "float32")
        else:
            raise ValueError(f"host staging buffers are float32, not {dtype}")
        arrays = SharedArrays(layout)
        arrays["slot_version"].fill(-1)
        arrays["latest"].fill(-1)
        locks = tuple(tuple(ctx.Lock() for _ in range(2)) for _ in range(replicas))
        return cls(arrays, gpu_staging, locks, tuple(ctx.Semaphore(0) for _ in range(replicas)))

    @classmethod
    def attach(cls, handle: WeightPlaneHandle) -> WeightPlane:
        return cls(SharedArrays.attach(handle.arrays), handle.gpu_staging, handle.locks, handle.doorbells)

    @property
    def handle(self) -> WeightPlaneHandle:
        return WeightPlaneHandle(self.arrays.handle, self._gpu_staging, self.locks, self.doorbells)

    @property
    def on_gpu(self) -> bool:
        return bool(self._gpu_staging)

    def device(self, replica: int = 0) -> torch.device:
        return self.staging[replica].device

    @property
    def dtype(self) -> torch.dtype:
        return self.staging[0].dtype

    def published_version(self, replica: int = 0) -> int:
        slot = int(self.arrays["latest"][replica])
        return -1 if slot < 0 else int(self.arrays["slot_version"][replica, slot])

    def publish(self, flat: torch.Tensor, version: int, routes: Sequence[Route] | None = None) -> Published:
        """Copy ``flat`` (the publisher's weights) along ``routes`` (default: straight to every
        replica); returns how long it took.

        The copies first wait for the work queued on the calling thread's current stream (the
        distribute lane's own, which waits for the learner's step)."""
        routes = list(routes) if routes is not None else [Route(None, r) for r in range(self.replicas)]
        t0 = time.perf_counter()
        slots = {r.dst: self._free_slot(r.dst) for r in routes}
        locks = [self.locks[dst][slot] for dst, slot in sorted(slots.items())]
        for lock in locks:
            lock.acquire()
        try:
            copy = self._copy_on_gpus if self.on_gpu else self._copy_on_host
            done = copy(flat.detach(), routes, slots)
            for dst, slot in slots.items():
                self.arrays["slot_version"][dst, slot] = version
                self.arrays["latest"][dst] = slot
        finally:
            for lock in locks:
                lock.release()
        seconds = time.perf_counter() - t0  # the version is visible from here on
        for dst in slots:
            self.doorbells[dst].release()  # never blocks, whoever sleeps on it or died there
        return Published(seconds, {dst: end - t0 for dst, end in done.items()})

    def _free_slot(self, replica: int) -> int:
        """The buffer the replica's actor is not reading: the other one than its latest."""
        latest = int(self.arrays["latest"][replica])
        return 1 - latest if latest >= 0 else 0

    def _copy_on_host(self, flat: torch.Tensor, routes: list[Route], slots: dict[int, int]) -> dict[int, float]:
        """The routes one after another; returns when each replica's copy ended."""
        done = {}
        for r in routes:
            src = flat if r.src is None else self.staging[r.src][slots[r.src]]
            self.staging[r.dst][slots[r.dst]].copy_(src)
            done[r.dst] = time.perf_counter()
        return done

    def _copy_on_gpus(self, flat: torch.Tensor, routes: list[Route], slots: dict[int, int]) -> dict[int, float]:
        """Every route on a stream of its own, chunk by chunk, each chunk after the same chunk reached
        the route's source; returns when each replica's copy was seen finished."""
        numel = flat.numel()
        step = max(1, CHUNK_BYTES // self.dtype.itemsize)
        bounds = [(lo, min(lo + step, numel)) for lo in range(0, numel, step)]
        ready = torch.cuda.current_stream(flat.device)
        arrived: dict[int, list[torch.cuda.Event]] = {}
        for r in routes:
            stream = self._streams.get(r) or self._streams.setdefault(r, torch.cuda.Stream(self.device(r.dst)))
            stream.wait_stream(ready)
            src = flat if r.src is None else self.staging[r.src][slots[r.src]]
            dst = self.staging[r.dst][slots[r.dst]]
            events = arrived[r.dst] = []
            with torch.cuda.stream(stream):
                for c, (lo, hi) in enumerate(bounds):
                    if r.src is not None:
                        stream.wait_event(arrived[r.src][c])
                    dst[lo:hi].copy_(src[lo:hi], non_blocking=True)
                    events.append(stream.record_event())
        done = {}
        for r in routes:  # in plan order, which is about the order they finish
            arrived[r.dst][-1].synchronize()
            done[r.dst] = time.perf_counter()
        return done

    def swap_into(self, flat: torch.Tensor, have_version: int, replica: int = 0) -> int:
        """If a newer version than ``have_version`` is published, copy it into ``flat``.

        Returns the version ``flat`` now holds. Called by the actor between batches only.
        """
        slot = int(self.arrays["latest"][replica])
        if slot < 0 or int(self.arrays["slot_version"][replica, slot]) <= have_version:
            return have_version
        with self.locks[replica][slot]:
            version = int(self.arrays["slot_version"][replica, slot])
            flat.copy_(self.staging[replica][slot], non_blocking=True)
            if flat.is_cuda:  # the copy is asynchronous: finish it before the lock goes
                torch.cuda.current_stream(flat.device).synchronize()
        return version

    def wait_for(self, version: int, timeout: float, replica: int = 0) -> bool:
        """Block until a version ≥ ``version`` is published (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while self.published_version(replica) < version:  # rings of older versions pass through here
            left = deadline - time.monotonic()
            if left <= 0 or not self.doorbells[replica].acquire(timeout=left):
                return self.published_version(replica) >= version
        return True

    def close(self) -> None:
        self.staging, self._gpu_staging, self._streams = [], (), {}  # drop views and IPC refs first
        if self.arrays.owner:
            self.arrays.unlink()
        else:
            self.arrays.close()
