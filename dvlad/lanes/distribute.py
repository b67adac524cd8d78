"""The distribute lane: publish each new weight version to every actor replica.

It runs beside the learner, in a thread of the learner process (on a GPU also on its own
CUDA stream), so the learner goes on while a version travels. A version is copied straight
from the learner's flat buffer into the staging buffers (on a GPU: fp32 master weights cast
to the actors' bf16 on the way, device to device, one pass), with no intermediate snapshot.
With several replicas the copies follow the job's replication plan (:class:`~dvlad.lanes.weights.Route`).
The price is one rule for the learner: it must not write its weights until :meth:`flush`
returns. The learner flushes before each update, after waiting for the next rollout, so
the copy (milliseconds) is long finished by then and the learner never actually waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import torch

from dvlad.lanes.weights import Published, Route, WeightPlane


class Distributor:
    """Publishes the learner's weights on ``device`` along ``routes`` (default: straight to every
    replica); ``on_published(version, start, published)`` hears of each publication."""

    def __init__(self, plane: WeightPlane, device: torch.device | str = "cpu", routes: Sequence[Route] | None = None,
                 on_published: Callable[[int, float, Published], None] | None = None) -> None:
        self.plane, self.routes = plane, routes
        device = torch.device(device)
        on_gpu = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if on_gpu else None
        self._weights_ready = torch.cuda.Event() if on_gpu else None
        self._source: torch.Tensor | None = None
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
        """Start publishing ``flat`` as ``version`` and return; leave ``flat`` unwritten until
        :meth:`flush`. Waits only if the previous version is still travelling."""
        self.flush()
        if self._weights_ready is not None:
            self._weights_ready.record()  # on the learner's stream: the copy starts after its last step
        self._source, self._version = flat.detach(), version
        self._idle.clear()
        self._pending.set()

    def flush(self) -> None:
        """Return once the version in hand has reached every replica (the learner may write again)."""
        self._idle.wait()
        if self._error is not None:
            raise RuntimeError("distribute lane failed") from self._error

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
                if self._weights_ready is not None:
                    self._stream.wait_event(self._weights_ready)  # a wait on the GPU, not here
                t0 = time.monotonic()
                published = self.plane.publish(self._source, self._version, self.routes)
                if self._on_published is not None:
                    self._on_published(self._version, t0, published)
            except BaseException as exc:  # surfaced on the learner's next publish or flush
                self._error = exc
            finally:
                self._source = None
                self._idle.set()

    def close(self) -> None:
        self._idle.wait()
        self._stop = True
        self._pending.set()
        self._thread.join(timeout=5)
