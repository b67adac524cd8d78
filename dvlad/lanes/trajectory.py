"""The bounded trajectory queue between the infer lane and the learn lane.

A ring of preallocated shared-memory segment slots. The actor fills a free slot, then
sends its index on the *full* queue; the learner reads it and returns the index on the
*free* queue. Only slot indices cross process boundaries. The number of slots bounds
how far sampling can run ahead of learning.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from dataclasses import dataclass

from dvlad.shm import ArraySpec, SharedArrays, SharedArraysHandle
from dvlad.spaces import ACTION_DIM, EnvSpec, image_key


@dataclass(frozen=True)
class SegmentShape:
    """Sizes of one segment: ``steps`` transitions of ``envs`` envs (one env group)."""

    steps: int
    envs: int
    action_chunk: int
    instruction_tokens: int


def segment_layout(spec: EnvSpec, shape: SegmentShape, capacity: int) -> dict[str, ArraySpec]:
    """Arrays for ``capacity`` segments. Observations keep T+1 rows: the last one lets the
    learner bootstrap the value of the state the segment stopped in."""
    c, t, e = capacity, shape.steps, shape.envs
    layout = {image_key(cam): ArraySpec((c, t + 1, e, h, w, 3), "uint8")
              for cam, (h, w) in spec.cameras.items()}
    if spec.aux_dim:
        layout["aux"] = ArraySpec((c, t + 1, e, spec.aux_dim), "float32")
    layout.update(
        proprio=ArraySpec((c, t + 1, e, spec.proprio_dim), "float32"),
        instruction=ArraySpec((c, t + 1, e, shape.instruction_tokens), "int64"),
        tokens=ArraySpec((c, t, e, shape.action_chunk, ACTION_DIM), "int64"),
        logprob=ArraySpec((c, t, e, shape.action_chunk * ACTION_DIM), "float32"),  # per action token
        value=ArraySpec((c, t, e), "float32"),
        reward=ArraySpec((c, t, e), "float32"),
        env_steps=ArraySpec((c, t, e), "int32"),
        done=ArraySpec((c, t, e), "bool"),
        success=ArraySpec((c, t, e), "bool"),
        valid=ArraySpec((c, t, e), "bool"),
        version=ArraySpec((c, t, e), "int64"),
        # header: rollout index (the learner update this segment belongs to) and env group
        rollout=ArraySpec((c,), "int64"),
        group=ArraySpec((c,), "int64"),
    )
    return layout


@dataclass(frozen=True)
class TrajectoryQueueHandle:
    arrays: SharedArraysHandle
    shape: SegmentShape
    capacity: int
    free: mp.queues.Queue
    full: mp.queues.Queue


class TrajectoryQueue:
    """Either end of the queue; the creator owns the shared memory."""

    def __init__(self, arrays: SharedArrays, shape: SegmentShape, capacity: int,
                 free: mp.queues.Queue, full: mp.queues.Queue) -> None:
        self.arrays, self.shape, self.capacity = arrays, shape, capacity
        self._free, self._full = free, full

    @classmethod
    def create(cls, ctx: mp.context.BaseContext, spec: EnvSpec, shape: SegmentShape,
               capacity: int) -> TrajectoryQueue:
        free, full = ctx.Queue(), ctx.Queue()
        for i in range(capacity):
            free.put(i)
        return cls(SharedArrays(segment_layout(spec, shape, capacity)), shape, capacity, free, full)

    @classmethod
    def attach(cls, handle: TrajectoryQueueHandle) -> TrajectoryQueue:
        return cls(SharedArrays.attach(handle.arrays), handle.shape, handle.capacity,
                   handle.free, handle.full)

    @property
    def handle(self) -> TrajectoryQueueHandle:
        return TrajectoryQueueHandle(self.arrays.handle, self.shape, self.capacity, self._free, self._full)

    def try_acquire(self, timeout: float = 0.0) -> int | None:
        """A free slot index to fill, or None if the learner still holds every slot."""
        try:
            return self._free.get(timeout=timeout) if timeout > 0 else self._free.get_nowait()
        except queue.Empty:
            return None

    def publish(self, slot: int) -> None:
        self._full.put(slot)

    def take(self, timeout: float | None = None) -> int:
        """The next filled slot, in the order they were published."""
        return self._full.get(timeout=timeout)

    def release(self, slot: int) -> None:
        self._free.put(slot)

    def depth(self) -> int:
        """Filled slots waiting for the learner (approximate, as mp queues are)."""
        try:
            return self._full.qsize()
        except NotImplementedError:  # macOS
            return -1

    def view(self, slot: int) -> dict:
        """The arrays of one slot (views, no copy; header fields as 0-d arrays)."""
        return {name: arr[slot, ...] for name, arr in self.arrays.arrays.items()}

    def close(self) -> None:
        if self.arrays.owner:
            self.arrays.unlink()
        else:
            self.arrays.close()
