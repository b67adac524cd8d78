"""Plot one or more runs' metrics (success rate, return, lane throughput, staleness) to a PNG.

    python scripts/plot_run.py runs/demo --out runs/demo/report.png
    python scripts/plot_run.py runs/ppo runs/grpo --labels PPO GRPO --out docs/learning_reach.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dvlad.runtime.metrics import read_jsonl

PANELS = (
    ("success_rate", "success rate (last 100 episodes)"),
    ("episode_return", "episode return"),
    ("env_steps_per_s", "env steps / s"),
    ("staleness_mean", "mean staleness (versions)"),
)


def plot(runs: list[Path], labels: list[str], out: Path, x: str = "env_steps") -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for run, label in zip(runs, labels, strict=True):
        rows = read_jsonl(run / "metrics.jsonl")
        for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
            pts = [(r[x] / (60 if x == "time_s" else 1), r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=label)
            ax.set_title(title)
            ax.set_xlabel("minutes" if x == "time_s" else x.replace("_", " "))
            ax.grid(alpha=0.3)
    axes.flat[0].set_ylim(-0.02, 1.02)
    axes.flat[0].legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding metrics.jsonl")
    parser.add_argument("--labels", nargs="*", help="one label per run (default: directory names)")
    parser.add_argument("--x", default="env_steps", choices=("env_steps", "time_s"), help="x axis")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error("give one label per run")
    plot(args.runs, labels, args.out, args.x)


if __name__ == "__main__":
    main()
