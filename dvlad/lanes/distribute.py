"""The distribute lane: publish each new weight version to every actor replica.

It runs beside the learner, in a thread of the learner process (on a GPU also on its own
CUDA stream), so the learner goes on with its next update while a version travels. The
learner hands over a snapshot of its flat buffer: one copy on the learner's own stream,
into a buffer of the staging buffers' device and dtype (on a GPU: fp32 master weights cast
to bf16, device to device). It only waits if the previous version is still travelling.
"""

from __future__ import annotations

import threading
import time

import torch

from dvlad.lanes.weights import WeightPlane


class Distributor:
    def __init__(self, plane: WeightPlane, numel: int, on_published=None) -> None:
        self.plane = plane
        self._snapshot = torch.empty(numel, dtype=plane.dtype, device=plane.device)
        on_gpu = plane.device.type == "cuda"
        self._stream = torch.cuda.Stream(plane.device) if on_gpu else None
        self._snapshot_done = torch.cuda.Event() if on_gpu else None
        self._version = -1
        self._pending = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._on_published = on_published
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dvla-distribute", daemon=True)
        self._thread.start()

    def publish(self, flat: torch.Tensor, version: int) -> None:
        """Snapshot ``flat`` as ``version`` and return; the copy to replicas runs behind."""
        self._idle.wait()
        if self._error is not None:
            raise RuntimeError("distribute lane failed") from self._error
        self._snapshot.copy_(flat.detach(), non_blocking=True)
        if self._snapshot_done is not None:
            self._snapshot_done.record()  # on the learner's stream; the distribute stream waits for it
        self._version = version
        self._idle.clear()
        self._pending.set()

    def _run(self) -> None:
        if self._stream is None:
            self._serve()
        else:
            with torch.cuda.stream(self._stream):
                self._serve()

    def _serve(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            if self._stop:
                return
            try:
                if self._snapshot_done is not None:
                    self._snapshot_done.synchronize()
                t0 = time.monotonic()
                seconds = self.plane.publish(self._snapshot, self._version)
                if self._on_published is not None:
                    self._on_published(self._version, t0, t0 + seconds)
            except BaseException as exc:  # surfaced on the learner's next publish
                self._error = exc
            finally:
                self._idle.set()

    def flush(self) -> None:
        """Return once the version in hand has reached every replica."""
        self._idle.wait()
        if self._error is not None:
            raise RuntimeError("distribute lane failed") from self._error

    def close(self) -> None:
        self._idle.wait()
        self._stop = True
        self._pending.set()
        self._thread.join(timeout=5)
