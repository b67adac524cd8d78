"""Each running job's GPU memory as ``/v1/gpus`` and ``/metrics`` show it: per pool, the size its
newest metric row reports, the largest so far, its budget and the daemon's estimate.

Why one function for both: ``dvla gpus``, ``dvla top`` and a Prometheus dashboard must agree on what a
job holds and was promised; the budgets and the estimate come from the job's spec (as admission
computed them), the sizes from what the job measured (``dvla.metric_names.GPU_POOLS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dvla import metric_names as m
from dvla.spec import JobSpec
from dvlad.gpu.budgets import Budgets, job_budgets
from dvlad.gpu.memory_estimate import estimate
from dvlad.runtime.jobfiles import metrics_rows
from dvlad.runtime.launch import run_dir
from dvlad.sched.memory_fit import MemoryAsk
from dvlad.store import Job

if TYPE_CHECKING:
    from dvlad.server.core import Daemon


@dataclass(frozen=True)
class MemoryPlan:
    """What a job was promised on each of its GPUs: its budgets (None: no cap) and the estimate
    (None where dvlad has none for its model)."""

    budgets: Budgets
    estimate: MemoryAsk | None

    @classmethod
    def of(cls, spec: JobSpec) -> MemoryPlan:
        est = estimate(spec)
        return cls(job_budgets(spec, est), est)


def job_memory(plan: MemoryPlan, row: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"weight_pool": {"used", "peak", "budget", "estimate"}, "activation_pool": {...},
    "activation_growing": bool}`` in bytes, None where unknown (no row yet, a job on the CPU)."""
    row = row or {}
    figures = {"weight_pool": (plan.budgets.weight, plan.estimate and plan.estimate.weight),
               "activation_pool": (plan.budgets.activation, plan.estimate and plan.estimate.activation)}
    out: dict[str, Any] = {}
    for pool, (size, peak) in m.GPU_POOLS.items():
        budget, est = figures[pool]
        out[pool] = {"used": _bytes(row.get(size)), "peak": _bytes(row.get(peak)), "budget": budget, "estimate": est}
    out["activation_growing"] = bool(row.get(m.GPU_ACTIVATION_GROWING))
    return out


def _bytes(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def jobs_on_gpus(daemon: Daemon) -> dict[int, list[tuple[Job, dict[str, Any]]]]:
    """GPU index -> the active jobs on it, oldest first, each with :func:`job_memory` from its newest
    metric row (a job on several GPUs shows its whole pools on each: its rows sum its processes)."""
    out: dict[int, list[tuple[Job, dict[str, Any]]]] = {}
    for job in daemon.cluster()[1]:
        if not job.gpu_ids:
            continue
        rows = metrics_rows(run_dir(daemon.supervisor.state_dir, job.id) / "metrics.jsonl", last=1)
        memory = job_memory(daemon.memory_plan(job), rows[-1] if rows else None)
        for index in job.gpu_ids:
            out.setdefault(index, []).append((job, memory))
    return out
