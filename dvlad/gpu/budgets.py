"""A job's per-GPU memory budgets, resolved from its ``[resources]``: what its process caps and what
the daemon's admission counts.

``"auto"`` resolves differently for the two, on purpose: a job on GPUs of its own is capped only by
the GPU (its activation budget is the rest of it), while a job that shares GPUs is capped at its
estimate times :data:`~dvlad.gpu.memory_estimate.SHARED_MARGIN`, so that what admission counted is
what it may use, and a neighbour is never short of what admission promised it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dvla.memsize import parse_size
from dvla.spec import JobSpec
from dvlad.gpu.memory_estimate import PROCESS_OVERHEAD, SHARED_MARGIN, estimate
from dvlad.sched.memory_fit import MemoryAsk


@dataclass
class Budgets:
    """A job's per-GPU budgets in bytes; None: no cap (``"auto"`` on GPUs of its own)."""

    weight: int | None = None
    activation: int | None = None


class BudgetUnknown(ValueError):
    """A sharing job left a budget at "auto" where its model has no estimate; ``key`` names it."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(reason)


def _size(value: str) -> int | None:
    return None if value == "auto" else parse_size(value)


def job_budgets(spec: JobSpec, est: MemoryAsk | None = None) -> Budgets:
    """The caps the job's processes enforce (:class:`dvlad.gpu.pools.DualPool`)."""
    r = spec.resources
    weight, activation = _size(r.weight_pool), _size(r.activation_pool)
    if r.share_gpus and activation is None:
        est = est or estimate(spec)
        activation = None if est is None else int(est.activation * SHARED_MARGIN)
    return Budgets(weight, activation)


def memory_ask(spec: JobSpec) -> MemoryAsk | None:
    """What a sharing job asks of each of its GPUs for admission; None for a job that takes its GPUs
    whole. Raises :class:`BudgetUnknown` for an "auto" budget the estimator cannot give."""
    r = spec.resources
    if not r.share_gpus:
        return None
    est = estimate(spec)
    weight = _size(r.weight_pool)
    for key, value in (("resources.weight_pool", weight), ("resources.activation_pool", _size(r.activation_pool))):
        if value is None and est is None:
            raise BudgetUnknown(key, f'{key} = "auto" needs an estimate, and dvlad has none for policy '
                                     f'"{spec.policy.name}" on env "{spec.env.name}" (only transformer-vla on '
                                     'a built-in env): give it as a size, such as "6GiB", to share GPUs')
    activation = job_budgets(spec, est).activation
    processes = 1 if spec.pipeline.learner == "thread" else 2
    other = est.other if est else processes * PROCESS_OVERHEAD
    return MemoryAsk(weight if weight is not None else est.weight, activation, other, base=est.base if est else 0)


def pool_report(spec: JobSpec, peaks: dict[str, float], weight_key: str, activation_key: str) -> dict:
    """The summary's ``gpu_memory``: each pool's estimate, budget and measured peak (bytes; None where
    there is none), for a job that ran on a GPU (``peaks`` holds what its rows reported); else {}."""
    if not peaks:
        return {}
    est, budgets = estimate(spec), job_budgets(spec)
    return {"gpu_memory": {
        "weight_pool": {"estimate": est and est.weight, "budget": budgets.weight, "peak": peaks.get(weight_key)},
        "activation_pool": {"estimate": est and est.activation, "budget": budgets.activation,
                            "peak": peaks.get(activation_key)}}}
