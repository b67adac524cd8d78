"""Ask before you submit: how a job would use its GPUs, how its weights would travel, how fast.

    python scripts/plan_job.py examples/gpu_bench.toml --topology tests/fixtures/gpu/hgx-h100-x8/topology.json --gpus 8
    python scripts/plan_job.py JOB.toml --json          # this machine's GPUs (NVML), one JSON line

Prints the layout (``[placement]``: decoupled or colocated), which GPUs run learner ranks and which
actor replicas, the replication plan (each copy ``src -> dst`` over its link, named as ``dvla topo``
names it) and the env steps/s the lane costs predict. The lane costs come from ``--costs`` (a
``bench_pipeline.py --json`` report measured with this job) or the committed GPU benchmark's. The
job runner and the daemon follow the same planner (``dvlad.gpu.layout``), so this is what runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dvla.spec import SpecError, load_spec
from dvlad.gpu.inventory import discover
from dvlad.gpu.layout import DEFAULT_COSTS, LaneCosts, plan_layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plan_job.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("job_file", help="the job's TOML file")
    parser.add_argument("--topology", type=Path, help="a topology record (topology.json, as `dvla topo --json` "
                        "or the fixtures hold); default: this machine's GPUs through NVML")
    parser.add_argument("--gpus", type=int, help="plan for this many GPUs instead of the job's resources.gpus")
    parser.add_argument("--costs", type=Path, help="lane costs: a `bench_pipeline.py --json` report "
                        f"(default: {DEFAULT_COSTS.source})")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="CPU cores the env workers may use (default: this machine's)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.job_file)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 2
    topology = json.loads(args.topology.read_text()) if args.topology else discover().topology
    available = sorted(d["index"] for d in topology.get("devices", []))
    gpus = args.gpus if args.gpus is not None else spec.resources.gpus
    if gpus < 1 or gpus > len(available):
        print(f"plan_job.py: asks for {gpus} GPUs; the topology has {len(available)}", file=sys.stderr)
        return 2
    placement = spec.placement
    costs = LaneCosts.from_benchmark(args.costs) if args.costs else DEFAULT_COSTS
    try:
        plan = plan_layout(available[:gpus], topology, layout=placement.layout, learners=placement.learner_gpus,
                           workers=spec.env.workers, groups=spec.env.groups, costs=costs, cores=args.cores,
                           fanout=placement.replication_fanout)
    except ValueError as err:
        print(f"plan_job.py: {err}", file=sys.stderr)
        return 2
    report = {"job": args.job_file, "gpus": gpus, **plan.as_dict(), "lane_costs_from": costs.source}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{plan.layout} on {gpus} GPU(s): learner ranks on {list(plan.learner_devices)}, "
          f"actor replicas on {list(plan.actor_devices)}")
    print(plan.replication.describe())
    print(f"predicted {plan.predicted_steps_per_s:.0f} env steps/s with {args.cores} cores "
          f"(lane costs: {costs.source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
