"""One job on one node and on two loopback node parts, side by side in one run: env steps/s, and per
update the gradient all-reduce and the weight publication.

    python scripts/bench_fed.py --json
    python scripts/bench_fed.py --job examples/reach_ppo.toml --steps 8000

Each row runs the job file with ``[placement] nodes = N`` as N processes of ``python -m
dvlad.runtime.job`` on this machine, each with the variables a coordinating dvlad gives the node
parts it starts (dvlad/lanes/node_part.py): every part runs its own env workers, actor and learner
rank, and the learner ranks meet over TCP on 127.0.0.1 (Gloo). Both rows spend the same budget
(``--steps`` env steps over all nodes), so they do the same work.

What loopback cannot show: a network. Gradients cross the kernel's loopback, not a link with its
bandwidth and latency (a real all-reduce of the flat gradient costs about 2 × its bytes / the link's
bandwidth, plus a round trip per minibatch); and every node part shares this machine's cores, so
two nodes add processes, not CPUs. The figures say what the federation costs in processes and
collectives, not what a second server buys. ``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from dvla import metric_names as m
from dvla.checkpoint import metadata
from dvla.spec import JobSpec, dump_toml, load_spec, spec_from_dict, spec_to_dict
from dvlad.lanes.node_part import loopback
from dvlad.runtime.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def configured(base: JobSpec, nodes: int, steps: int) -> JobSpec:
    """The job on ``nodes`` nodes with a budget of ``steps`` env steps and nothing else that stops it."""
    spec = spec_to_dict(base)
    spec["placement"]["nodes"] = nodes
    spec["train"].update(total_env_steps=steps, max_minutes=0.0, stop_at_success=0.0, checkpoint_every=0,
                         log_every=1, resume=False)
    spec["resources"].update(device="cpu", gpus=0)
    return spec_from_dict(spec)


def run_nodes(spec: JobSpec, nodes: int, workdir: Path) -> dict:
    """Run ``spec`` as ``nodes`` node parts of one learner rank each; node 0's figures."""
    job = workdir / f"nodes{nodes}.toml"
    job.write_text(dump_toml(spec))
    parts = loopback([1] * nodes) if nodes > 1 else [None]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dvlad.runtime.job", str(job), "--output-dir", str(workdir / f"n{nodes}-node{k}"),
         "--quiet"], env={**os.environ, **(part.environ() if part else {})}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for k, part in enumerate(parts)]
    for k, proc in enumerate(procs):
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{nodes} node(s): node {k} exited with status {proc.returncode}:\n{err[-2000:]}")
    summaries = [json.loads((workdir / f"n{nodes}-node{k}" / "summary.json").read_text()) for k in range(nodes)]
    rows = read_jsonl(workdir / f"n{nodes}-node0" / "metrics.jsonl")
    first = summaries[0]

    def mean(key: str, scale: float = 1.0) -> float | None:
        values = [r[key] for r in rows if key in r]
        return scale * float(np.mean(values)) if values else None

    train_s = first["wall_s"] - first["setup_s"]
    weights = int(metadata(Path(first["checkpoint"]))["numel"])  # fp32 on CPU: the gradient all-reduced
    return {"nodes": nodes, "gradient_bytes": 4 * weights, "env_steps": first[m.ENV_STEPS], "updates": first[m.VERSION],
            "node_env_steps": [s.get("node_env_steps", s[m.ENV_STEPS]) for s in summaries],
            "train_s": train_s, "setup_s": first["setup_s"], "steps_per_s": first[m.ENV_STEPS] / train_s,
            "samples_per_update": mean(m.SAMPLES), "learn_ms": mean(m.LEARN_S, 1e3),
            "allreduce_ms": mean(m.COLLECTIVE_S, 1e3), "publish_ms": mean(m.PUBLISH_MS)}


def _ms(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else f"{'-':>8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="What loopback cannot show: see the module's docstring and "
                                            "docs/federation.md.")
    parser.add_argument("--job", type=Path, default=REPO / "examples/reach_ppo.toml", help="the job file")
    parser.add_argument("--steps", type=int, default=6000, help="env steps of each row, over all its nodes")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = parser.parse_args()
    base = load_spec(args.job)
    print(f"job {args.job.name}: env {base.env.name}, per node {base.env.num_envs} envs on {base.env.workers} "
          f"workers and 1 learner rank (Gloo over loopback); {os.cpu_count()} cores shared by every node part; "
          f"{args.steps} env steps a row")
    print(f"load average (1 min) before the run: {os.getloadavg()[0]:.1f}")
    print(f"{'nodes':>5} {'steps/s':>8} {'updates':>7} {'learn ms':>8} {'allred ms':>9} {'publish ms':>10}  "
          "env steps by node")
    rows = []
    load_before = os.getloadavg()[0]  # other work on the machine shares its cores: the figures say how much
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        for nodes in (1, 2):
            row = run_nodes(configured(base, nodes, args.steps), nodes, Path(tmp))
            rows.append(row)
            print(f"{nodes:5d} {row['steps_per_s']:8.1f} {row['updates']:7d} {_ms(row['learn_ms'])} "
                  f"{_ms(row['allreduce_ms']):>9} {_ms(row['publish_ms']):>10}  {row['node_env_steps']}")
    print(f"each minibatch all-reduces the flat gradient: {rows[0]['gradient_bytes'] / 1e6:.2f} MB "
          f"({base.algo.update_epochs} × {base.algo.minibatches} minibatches an update)")
    if args.json:
        print(json.dumps({"job": args.job.name, "env": base.env.name, "cores": os.cpu_count(),
                          "cpu": platform.machine(), "steps_per_row": args.steps, "transport": "gloo, loopback",
                          "load_avg_1min": [load_before, os.getloadavg()[0]], "rows": rows}))


if __name__ == "__main__":
    main()
