"""Which of a job's devices run learner ranks and which run actor replicas, how a weight version
reaches the replicas, and the throughput to expect: the planner ``scripts/plan_job.py`` prints
and the job runner follows.

Two layouts (docs/planes.md draws them):

- **decoupled**: learner devices and actor devices are disjoint. The inference plane (env
  workers and actor replicas) never time-slices a GPU with the training plane, which on one GPU
  costs an inference batch about 2× its time alone (docs/benchmarks.md). The learner devices are
  the best-linked set (their ranks all-reduce gradients every minibatch); rank 0, the one of them
  best linked to an actor device, is the source of every version (all ranks hold the same weights).
- **colocated**: every device runs an actor replica and a learner rank. Every rank holds the same
  weights after each update, so each publishes to the replica beside it: nothing crosses a link.

Throughput is predicted from each lane's cost per env step, measured alone (``bench_pipeline``
reports them): the slowest resource sets the pace, and devices of one kind add up.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dvla.layouts import learner_choices, resolve_layout, split_problem
from dvlad.gpu.links import pair_scores
from dvlad.gpu.replication import Copy, ReplicationPlan, link_between, link_key, plan_replication

Layout = Literal["decoupled", "colocated"]
TOPOLOGY_ENV = "DVLA_TOPOLOGY"
"""The variable naming the topology record dvlad hands a job on several GPUs (the record it placed the
job with), so that the job plans the layout the daemon planned."""


@dataclass(frozen=True)
class LaneCosts:
    """Milliseconds each lane takes per env step, alone on its resource."""

    sample_core_ms: float
    """CPU time (core-milliseconds) the simulators spend per env step."""
    infer_ms: float
    """Time of one device spent on inference per env step."""
    learn_ms: float
    """Time of one device spent on learning per env step (one learner rank)."""
    source: str
    """Where the numbers come from."""

    @classmethod
    def from_benchmark(cls, path: Path) -> LaneCosts:
        """The costs ``scripts/bench_pipeline.py --json`` measured (its JSON line or report file)."""
        text = path.read_text()
        try:
            report = json.loads(text)
        except ValueError:  # the script's output: its last line is the JSON object
            report = json.loads(text.strip().splitlines()[-1])
        lanes = report["lane_ms_per_step"]
        return cls(sample_core_ms=lanes["sample"] * report["workers"], infer_ms=lanes["infer"],
                   learn_ms=lanes["learn"], source=f"{path} ({report.get('device', '?')}, {report.get('policy', '?')})")


DEFAULT_COSTS = LaneCosts(sample_core_ms=4.872 * 16, infer_ms=0.706, learn_ms=4.109,
                          source="docs/bench/pipeline_gpu.json: 1.04 B transformer-vla, H100, balanced workload")
"""The committed GPU benchmark's lane costs, for a job that has none of its own."""


@dataclass(frozen=True)
class JobLayout:
    layout: Layout
    learner_devices: tuple[int, ...]
    actor_devices: tuple[int, ...]
    replication: ReplicationPlan
    predicted_steps_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "learner_gpus": list(self.learner_devices),
                "actor_gpus": list(self.actor_devices), "replication": self.replication.as_json(),
                "replication_depth": self.replication.depth,
                "predicted_steps_per_s": round(self.predicted_steps_per_s, 1)}


def predicted_steps_per_s(layout: Layout, learners: int, actors: int, costs: LaneCosts, cores: int) -> float:
    """Env steps/s of the slowest resource: the simulators on ``cores`` cores, the actor devices,
    the learner devices (data-parallel ranks taken as adding up; colocated, a device does both)."""
    simulate = cores * 1e3 / costs.sample_core_ms
    if layout == "colocated":
        return min(simulate, actors * 1e3 / (costs.infer_ms + costs.learn_ms))
    return min(simulate, actors * 1e3 / costs.infer_ms, learners * 1e3 / costs.learn_ms)


def best_linked(devices: Sequence[int], count: int, topology: dict[str, Any] | None) -> tuple[int, ...]:
    """The ``count`` devices whose pairs are best linked (NVLink first), lowest indices on ties."""
    scores = pair_scores(topology) if topology else {}
    return max(itertools.combinations(sorted(devices), count),
               key=lambda s: (sum(scores.get(frozenset(p), 0.0) for p in itertools.combinations(s, 2)),
                              [-d for d in s]))


def plan_layout(devices: Sequence[int], topology: dict[str, Any] | None, *, layout: str = "auto",
                learners: int = 0, workers: int, groups: int, costs: LaneCosts = DEFAULT_COSTS, cores: int = 1,
                fanout: int = 2) -> JobLayout:
    """The job's layout over ``devices`` (GPU indices of ``topology``, or CPU ranks with ``None``), for
    ``workers`` env workers in ``groups`` groups (``dvla.layouts`` says which splits fit).

    ``learners`` 0: of the splits that fit, the one the lane costs predict fastest (the fewest learner
    ranks on a tie, leaving more devices to act). ValueError, saying why, when none fits."""
    devices = sorted(devices)
    if not devices:
        raise ValueError("a layout needs at least one device")
    kind = resolve_layout(layout, len(devices))
    counts = learner_choices(kind, len(devices), learners, workers, groups)
    if not counts:
        raise ValueError(split_problem(kind, len(devices), learners, workers, groups))
    if kind == "colocated":
        plan = ReplicationPlan(devices[0], tuple(Copy(d, d, "X", 1) for d in devices))  # each rank to its own
        return JobLayout(kind, tuple(devices), tuple(devices), plan,
                         predicted_steps_per_s(kind, len(devices), len(devices), costs, cores))
    count = max(counts, key=lambda k: (predicted_steps_per_s(kind, k, len(devices) - k, costs, cores), -k))
    chosen = best_linked(devices, count, topology)
    actor_devices = tuple(d for d in devices if d not in chosen)
    link = link_between(topology)
    source = min(chosen, key=lambda d: (min(link_key(link(d, a)) for a in actor_devices), d))
    learner_devices = (source, *(d for d in chosen if d != source))  # rank 0 publishes: the best-linked
    plan = plan_replication(topology, source, actor_devices, fanout)
    return JobLayout(kind, learner_devices, actor_devices, plan,
                     predicted_steps_per_s(kind, count, len(actor_devices), costs, cores))


def cpus_near(topology: dict[str, Any] | None, gpu: int) -> tuple[int, ...]:
    """The cores NVML names as near ``gpu`` (its CPU affinity: the socket it hangs off) that this
    process may use; empty where NVML gave none (then the workers run anywhere)."""
    device = next((d for d in (topology or {}).get("devices", []) if d.get("index") == gpu), {})
    words = device.get("cpu_affinity_words")
    if not isinstance(words, list):
        return ()
    near = {64 * i + bit for i, word in enumerate(words) if isinstance(word, int)
            for bit in range(64) if word >> bit & 1}
    return tuple(sorted(near & os.sched_getaffinity(0)))
