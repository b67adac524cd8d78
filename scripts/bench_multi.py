"""One job on 1, 2 and 4 devices in each layout, side by side in one run: env steps/s, publication.

    python scripts/bench_multi.py --json                        # CPU devices (placement.cpu_devices)
    python scripts/bench_multi.py --job examples/reach_ppo.toml --steps 6000

Every row runs the same job (async) with ``[placement]`` set to one layout over N devices: the one-
device job (colocated on 1: what every job was before layouts), decoupled (N/2 learner ranks, N/2
actor replicas; on 2 devices 1 + 1) and colocated (N ranks, N replicas). On a machine with GPUs,
``--gpu`` runs the rows on as many GPUs as it has (the ones torch sees), else on CPU devices.

What CPU devices can show: that every path runs and what it costs in processes, messages and
copies; not speed-up. Each CPU device is processes that share the same cores, so with 2 cores
more devices mostly add contention; the throughput a layout buys comes from separate GPUs
(``scripts/plan_job.py`` predicts it; the issue "Multi-GPU runs" measures it).
``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from bench_pipeline import run_mode

from dvla.layouts import learner_choices
from dvla.spec import JobSpec, load_spec, spec_from_dict, spec_to_dict
from dvlad.lanes.device import placement_for

REPO = Path(__file__).resolve().parents[1]


def configurations(devices: int, workers: int, groups: int) -> list[tuple[str, int, int]]:
    """(layout, devices, learner ranks) of every row that fits ``workers`` env workers."""
    rows = [("colocated", 1, 1)]
    for n in (2, 4):
        if n > devices:
            break
        half = n // 2
        if learner_choices("decoupled", n, half, workers, groups):
            rows.append(("decoupled", n, half))
        if learner_choices("colocated", n, 0, workers, groups):
            rows.append(("colocated", n, n))
    return rows


def configured(base: JobSpec, layout: str, devices: int, learners: int, gpu: bool) -> JobSpec:
    """The job with ``[placement]`` (and its devices) set for one row, validated as a submit would."""
    spec = spec_to_dict(base)
    spec["placement"].update(layout=layout, learner_gpus=learners if layout == "decoupled" else 0,
                             cpu_devices=0 if gpu or devices == 1 else devices)
    if gpu:
        spec["resources"]["gpus"] = devices
    else:
        spec["resources"].update(device="cpu", gpus=0)
    return spec_from_dict(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=Path, default=REPO / "examples/reach_ppo.toml")
    parser.add_argument("--steps", type=int, default=3000, help="env steps per row")
    parser.add_argument("--devices", type=int, default=4, help="the most devices a row uses")
    parser.add_argument("--gpu", action="store_true", help="GPUs instead of CPU devices (as many as torch sees)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = load_spec(args.job)
    devices = min(args.devices, torch.cuda.device_count()) if args.gpu else args.devices
    rows = []
    print(f"job {args.job.name}: env {base.env.name}, {base.env.num_envs} envs on {base.env.workers} workers, "
          f"{os.cpu_count()} cores, {'GPUs' if args.gpu else 'CPU devices'}, {args.steps} env steps a row")
    print(f"{'layout':10} {'devices':>7} {'ranks':>5} {'replicas':>8} {'steps/s':>8} {'publish ms':>10}")
    for layout, n, learners in configurations(devices, base.env.workers, base.env.groups):
        spec = configured(base, layout, n, learners, args.gpu)
        result = run_mode(spec, "async", args.steps, placement_for(spec))
        replicas = n - learners if layout == "decoupled" else n
        row = {"layout": layout, "devices": n, "learner_ranks": learners, "actor_replicas": replicas,
               "steps_per_s": result["steps_per_s"], "publish_ms": result["publish_ms"],
               "staleness_max": result["staleness_max"]}
        rows.append(row)
        print(f"{layout:10} {n:7d} {learners:5d} {replicas:8d} {row['steps_per_s']:8.1f} {row['publish_ms']:10.2f}")
    if args.json:
        print(json.dumps({"job": args.job.name, "env": base.env.name, "cores": os.cpu_count(),
                          "cpu": platform.machine(), "devices": "gpu" if args.gpu else "cpu",
                          "steps_per_row": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
