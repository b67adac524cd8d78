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
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dvla.spec import JobSpec
from dvlad.gpu.layout import TOPOLOGY_ENV


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


def placement_for(spec: JobSpec, device: torch.device | None = None) -> Placement:
    """The job's placement from ``resources.device`` (``auto``: the GPU when torch sees one),
    ``resources.precision`` and ``pipeline.learner``; on ``device`` (one of the job's devices,
    :func:`job_devices`) instead of the current one when given."""
    placement = _device_placement(spec)
    if device is not None:
        placement = dataclasses.replace(placement, device=device)
    return dataclasses.replace(placement, learner_thread=spec.pipeline.learner == "thread")


@dataclass(frozen=True)
class JobDevices:
    """The devices a job's layout is planned over (``[placement]``, docs/planes.md)."""

    devices: tuple[torch.device, ...]
    """The torch device of each, in order."""
    ids: tuple[int, ...]
    """The topology's number of each: the node's GPU index (NVML's, as ``CUDA_VISIBLE_DEVICES`` named
    it), or the CPU device's number."""
    topology: dict[str, Any] | None
    """The node's topology record (None: CPU devices, or one GPU)."""

    def device_of(self, device_id: int) -> torch.device:
        return self.devices[self.ids.index(device_id)]


def job_devices(spec: JobSpec, placement: Placement) -> JobDevices:
    """``placement.cpu_devices`` CPU devices; or the job's ``resources.gpus`` GPUs (at least the one
    it runs on), their node indices from ``CUDA_VISIBLE_DEVICES`` and the topology from the daemon's
    record (``$DVLA_TOPOLOGY``) or NVML; or the one CPU."""
    count = spec.placement.cpu_devices
    if count:
        return JobDevices(tuple(torch.device("cpu") for _ in range(count)), tuple(range(count)), None)
    if not placement.on_gpu:
        return JobDevices((placement.device,), (0,), None)
    count = max(spec.resources.gpus, 1)
    if count > torch.cuda.device_count():
        raise ValueError(f"resources.gpus = {count}, but torch sees {torch.cuda.device_count()} GPU(s)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    ids = tuple(int(v) for v in visible[:count]) if all(v.strip().isdigit() for v in visible[:count]) \
        and len(visible) >= count else tuple(range(count))
    topology = None
    if count > 1:
        if os.environ.get(TOPOLOGY_ENV):
            topology = json.loads(Path(os.environ[TOPOLOGY_ENV]).read_text())
        else:
            from dvlad.gpu.inventory import discover  # NVML, only for a job that needs its links

            topology = discover().topology
    return JobDevices(tuple(torch.device("cuda", i) for i in range(count)), ids, topology)


def _device_placement(spec: JobSpec) -> Placement:
    wanted, gpus, precision = spec.resources.device, spec.resources.gpus, spec.resources.precision
    if (wanted == "cuda" or gpus) and not torch.cuda.is_available():
        asked = f"resources.gpus = {gpus}" if gpus else 'resources.device = "cuda"'
        raise ValueError(f"{asked}, but torch sees no GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    on_cpu_devices = spec.placement.cpu_devices > 0  # CPU devices stand in for GPUs, even where there are some
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available() and not on_cpu_devices):
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
