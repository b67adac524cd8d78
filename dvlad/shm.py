"""Named numpy arrays in one shared-memory block, attachable from other processes by handle.

Why: the data plane never pickles observations. A producer and a consumer map the same
block; only a small handle (block name and layout) crosses a process boundary, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from dvlad.segments import new_segment_name

_ALIGN = 64  # cache-line alignment so neighbouring arrays never share a line


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class SharedArraysHandle:
    """What a child process needs to map the same arrays: picklable and tiny."""

    block: str
    layout: tuple[tuple[str, ArraySpec], ...]


def _offsets(layout: tuple[tuple[str, ArraySpec], ...]) -> tuple[list[int], int]:
    offsets, cursor = [], 0
    for _, spec in layout:
        offsets.append(cursor)
        cursor += -(-spec.nbytes // _ALIGN) * _ALIGN
    return offsets, max(cursor, _ALIGN)


class SharedArrays:
    """A set of named arrays backed by one ``SharedMemory`` block.

    The creator owns the block and must :meth:`unlink` it; attachers only :meth:`close`. The block
    is named after the job (:mod:`dvlad.segments`), so what a killed job leaves is found and removed.
    """

    def __init__(self, layout: dict[str, ArraySpec] | tuple[tuple[str, ArraySpec], ...],
                 _attach: str | None = None) -> None:
        self.layout = tuple(layout.items()) if isinstance(layout, dict) else tuple(layout)
        offsets, size = _offsets(self.layout)
        self.owner = _attach is None
        self._shm = (shared_memory.SharedMemory(name=new_segment_name(), create=True, size=size) if self.owner
                     else shared_memory.SharedMemory(name=_attach))
        self.arrays: dict[str, np.ndarray] = {
            name: np.ndarray(spec.shape, dtype=spec.dtype, buffer=self._shm.buf, offset=off)
            for (name, spec), off in zip(self.layout, offsets, strict=True)
        }
        if self.owner:
            for a in self.arrays.values():
                a.fill(0)

    @classmethod
    def attach(cls, handle: SharedArraysHandle) -> SharedArrays:
        return cls(handle.layout, _attach=handle.block)

    @property
    def handle(self) -> SharedArraysHandle:
        return SharedArraysHandle(self._shm.name, self.layout)

    @property
    def nbytes(self) -> int:
        return self._shm.size

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def close(self) -> None:
        self.arrays.clear()  # drop views before closing, or the buffer stays exported
        self._shm.close()

    def unlink(self) -> None:
        self.close()
        if self.owner:
            self._shm.unlink()
