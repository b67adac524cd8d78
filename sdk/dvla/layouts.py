"""How a job's devices split into learner ranks and actor replicas: the rules ``dvla validate``
checks and the engine follows, defined once (pure, no torch).

A job runs on ``D`` devices: its GPUs, or ``placement.cpu_devices`` CPU devices (processes that
stand in for GPUs, so the multi-device code runs and is tested without one). ``decoupled``: ``L``
of them run data-parallel learner ranks and the other ``A = D − L`` actor replicas; ``colocated``:
every device runs both (``L = A = D``). Each replica steps ``env.workers / A`` of the job's env
workers and ``env.num_envs / A`` of its envs in the job's ``env.groups`` groups; each learner rank
trains on whole segments, one env group of one replica each, so a rollout must have at least one
segment per rank (``A × groups ≥ L``).
"""

from __future__ import annotations

from typing import Literal

LAYOUTS = ("auto", "decoupled", "colocated")
"""``placement.layout``: auto is colocated on one device, decoupled on more."""


def resolve_layout(layout: str, devices: int) -> Literal["decoupled", "colocated"]:
    if layout == "auto":
        return "colocated" if devices == 1 else "decoupled"
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return layout  # type: ignore[return-value]


def split_problem(layout: str, devices: int, learners: int, workers: int, groups: int) -> str | None:
    """Why ``learners`` learner ranks (0: any) cannot run on ``devices`` devices with ``workers`` env
    workers in ``groups`` groups, or None when they can."""
    if resolve_layout(layout, devices) == "colocated":
        if learners not in (0, devices):
            return f"colocated runs a learner rank on every one of the job's {devices} devices, not {learners}"
        if workers % devices:
            return f"env.workers ({workers}) must divide among the {devices} actor replicas"
        return None
    if devices < 2:
        return "decoupled needs at least 2 devices (learners on some, actors on the others)"
    if learners >= devices:
        return f"learner_gpus = {learners} leaves none of the job's {devices} devices to act on"
    if not learner_choices(layout, devices, learners, workers, groups):
        counts = [learners] if learners else list(range(1, devices))
        return ("no split of the job's devices into learners and actors fits: with "
                + ", ".join(f"{k} learner(s), env.workers ({workers}) must divide among {devices - k} replicas "
                            f"and {devices - k} × env.groups ({groups}) segments must feed {k} ranks"
                            for k in counts[:2]) + (" …" if len(counts) > 2 else ""))
    return None


def learner_choices(layout: str, devices: int, learners: int, workers: int, groups: int) -> list[int]:
    """The learner-rank counts that fit (``learners`` itself, or every one that does when it is 0)."""
    if resolve_layout(layout, devices) == "colocated":
        return [devices] if learners in (0, devices) and workers % devices == 0 else []
    counts = [learners] if learners else range(1, devices)
    return [k for k in counts if 0 < k < devices and workers % (devices - k) == 0 and (devices - k) * groups >= k]
