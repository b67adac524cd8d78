"""Where a job's tensors live and in which precision.

Why one place decides: the actor, the learner and the weight plane must agree. On a GPU the
actor holds its replica in bf16 (inference reads half the bytes and the weight plane moves
half), the learner keeps fp32 master weights and computes under bf16 autocast, and the
staging buffers between them are bf16 on the same GPU. ``resources.precision = "fp32"`` keeps
everything fp32 on the GPU too: the behaviour log-probs the actor records are then the
learner's to the last bit, which is what to compare against when a bf16 run learns worse.
On a CPU everything is fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from dvla.spec import JobSpec


@dataclass(frozen=True)
class Placement:
    device: torch.device
    actor_dtype: torch.dtype
    """dtype of the actor's replica and of the weight plane's staging buffers."""
    learner_dtype: torch.dtype = torch.float32
    """dtype of the learner's master weights (and of its optimizer state)."""
    autocast_dtype: torch.dtype | None = None
    """dtype the actor's and the learner's matrix work runs in on the GPU (None: the weights')."""
    learner_thread: bool = False
    """The learn lane runs as a thread of the actor's process (``pipeline.learner``)."""

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on a GPU unless the job asked for fp32; nothing on a CPU (fp32 there is
        faster and exact)."""
        if self.on_gpu and self.autocast_dtype is not None:
            return torch.autocast("cuda", dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def lane_stream(self, priority: int) -> contextlib.AbstractContextManager:
        """Run a lane's GPU work on a stream of its own, of ``priority`` (lower runs first).

        Why: the GPU's block scheduler serves the streams of one process by priority, so the
        actor's inference (highest) goes ahead of whatever the learner has queued; between two
        processes it can only time-slice. The new stream first waits for the work already
        queued on the thread's current one. Nothing on a CPU."""
        if not self.on_gpu:
            return contextlib.nullcontext()
        stream = torch.cuda.Stream(self.device, priority=priority)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        return torch.cuda.stream(stream)


ACTOR_PRIORITY = -100
"""The actor's stream priority: torch maps it to the device's highest (inference first)."""
LEARNER_PRIORITY = 0
"""The learner's stream priority: the default, the lowest."""


def placement_for(spec: JobSpec) -> Placement:
    """The job's placement from ``resources.device`` (``auto``: the GPU when torch sees one),
    ``resources.precision`` and ``pipeline.learner``."""
    placement = _device_placement(spec)
    return dataclasses.replace(placement, learner_thread=spec.pipeline.learner == "thread")


def _device_placement(spec: JobSpec) -> Placement:
    wanted, gpus, precision = spec.resources.device, spec.resources.gpus, spec.resources.precision
    if (wanted == "cuda" or gpus) and not torch.cuda.is_available():
        asked = f"resources.gpus = {gpus}" if gpus else 'resources.device = "cuda"'
        raise ValueError(f"{asked}, but torch sees no GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda", torch.cuda.current_device())
        if precision == "fp32":
            return Placement(device, torch.float32)
        return Placement(device, torch.bfloat16, autocast_dtype=torch.bfloat16)
    if precision == "bf16":
        raise ValueError('resources.precision = "bf16" needs a GPU; this job runs on the CPU, '
                         'where the lanes compute in fp32 (use "auto" or "fp32")')
    return Placement(torch.device("cpu"), torch.float32)


CPU = Placement(torch.device("cpu"), torch.float32)
"""The placement of everything on the CPU (tests, laptops)."""
