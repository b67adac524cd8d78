"""Plot one or more runs' metrics (success rate, return, lane throughput, staleness) to a PNG.

    python scripts/plot_run.py runs/demo --out runs/demo/report.png
    python scripts/plot_run.py runs/ppo runs/grpo --labels PPO GRPO --out docs/learning_reach.png

The panels are `dvla report`'s (dvla.report), drawn from run directories on disk instead of the daemon.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dvla import metric_names as m
from dvla.report import plot_runs
from dvlad.runtime.metrics import read_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding metrics.jsonl")
    parser.add_argument("--labels", nargs="*", help="one label per run (default: directory names)")
    parser.add_argument("--x", default=m.ENV_STEPS, choices=(m.ENV_STEPS, m.TIME_S), help="x axis")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error("give one label per run")
    runs = [(label, read_jsonl(run / "metrics.jsonl")) for label, run in zip(labels, args.runs, strict=True)]
    print(f"wrote {plot_runs(runs, args.out, args.x)}")


if __name__ == "__main__":
    main()
