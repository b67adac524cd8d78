"""Where a job's tensors live and in which precision.

Why one place decides: the actor, the learner and the weight plane must agree. On a GPU the
actor holds its replica in bf16 (inference reads half the bytes and the weight plane moves
half), the learner keeps fp32 master weights and computes under bf16 autocast, and the
staging buffers between them are bf16 on the same GPU. On a CPU everything is fp32.
"""

from __future__ import annotations

import contextlib
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

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on a GPU; nothing on a CPU (fp32 there is faster and exact)."""
        if self.on_gpu:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def placement_for(spec: JobSpec) -> Placement:
    """The job's placement from ``resources.device`` (``auto``: the GPU when torch sees one)."""
    wanted, gpus = spec.resources.device, spec.resources.gpus
    if (wanted == "cuda" or gpus) and not torch.cuda.is_available():
        asked = f"resources.gpus = {gpus}" if gpus else 'resources.device = "cuda"'
        raise ValueError(f"{asked}, but torch sees no GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return Placement(torch.device("cuda", torch.cuda.current_device()), torch.bfloat16)
    return Placement(torch.device("cpu"), torch.float32)


CPU = Placement(torch.device("cpu"), torch.float32)
"""The placement of everything on the CPU (tests, laptops)."""
