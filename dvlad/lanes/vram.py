"""A job's GPU memory in the two pools ``dvla top`` draws: weights and activations.

Weight pool: the long-lived tensors that are the model, held from the job's start to its end (the
learner's master weights and optimizer state; the actor's replica and the weight plane's staging
buffers), as DESIGN.md draws it. Activation pool: the rest of what the job's allocator held at its
peak since the last report (activations, gradients, batches, temporaries). Both are measured, never estimated:
the sizes of the tensors themselves, and the caching allocator's own peak.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import torch

from dvla import metric_names as m


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors``: the parameters are views of one flat
    buffer, so that buffer counts once however many views are given."""
    storages = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_allocated(device: torch.device) -> int:
    """This process's allocator peak on ``device`` since the last call, which resets it."""
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return peak


GROWTH_UPDATES = 5
"""Updates in a row the activation pool must grow at for :func:`activation_growth` to flag it."""
GROWTH_MIN = 0.01
"""Least rise, as a fraction of the previous peak, that counts as growing (not allocator noise)."""


def activation_growth(history: Sequence[float]) -> dict[str, float]:
    """The row's growth flag from the activation pool of the latest updates (oldest first): 1 when it
    rose by more than ``GROWTH_MIN`` at each of the last ``GROWTH_UPDATES`` updates. Why: memory that
    creeps update after update (cached blocks, tensors kept across iterations) is the most common way
    an RL job dies at step 20+; flagged, a user sees it in ``dvla top`` before the cap stops the job."""
    recent = list(history)[-(GROWTH_UPDATES + 1):]
    growing = len(recent) == GROWTH_UPDATES + 1 and all(
        b > a * (1 + GROWTH_MIN) for a, b in itertools.pairwise(recent))
    return {m.GPU_ACTIVATION_GROWING: float(growing)}


def job_pools(actor_weights: int, actor_peak: int, learner_weights: int, learner_peak: int | None) -> dict[str, float]:
    """The job's two pools, as metric values, from the actor process's side and the learner's
    update statistics (``UpdateStats.learner_weight_bytes`` and ``learner_peak_bytes``).

    A learner process reports its own weights and allocator peak; a learner thread only its
    weights, since the actor's process then holds both in one allocator."""
    if learner_peak is not None:
        activation = (actor_peak - actor_weights) + (learner_peak - learner_weights)
    else:
        activation = actor_peak - actor_weights - learner_weights
    return {m.GPU_WEIGHT_BYTES: float(actor_weights + learner_weights),
            m.GPU_ACTIVATION_BYTES: float(max(activation, 0))}


def running_peaks(peaks: dict[str, float], values: Mapping[str, float]) -> dict[str, float]:
    """Raise ``peaks`` (each pool's largest size so far, by its row key) to this row's ``values`` and
    return the row's peak keys. Why in the row: ``/v1/gpus``, ``/metrics`` and ``dvla top`` compare a
    running job's peak with its estimate and cap from its newest row alone."""
    out = {}
    for size, peak in m.GPU_POOLS.values():
        if size in values:
            peaks[size] = max(peaks.get(size, 0.0), values[size])
            out[peak] = peaks[size]
    return out
