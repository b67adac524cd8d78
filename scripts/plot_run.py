"""Plot one or more runs' metrics (`dvla report`'s panels) to a PNG; compared runs keep one colour each.

    python scripts/plot_run.py runs/demo --out runs/demo/report.png
    python scripts/plot_run.py runs/ppo runs/grpo --labels PPO GRPO --out docs/learning_reach.png
    python scripts/plot_run.py docs/learning/reach-ppo.metrics.csv --out ppo.png

A run is a run directory (its metrics.jsonl) or a metrics file: JSON lines, or the CSV a run writes
(its headline columns only, so the panels of other keys say "no data"). The panels are `dvla report`'s
(dvla.report), drawn from files on disk instead of the daemon.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from dvla import metric_names as m
from dvla.report import plot_runs
from dvlad.runtime.metrics import read_jsonl


def _number(text: str | None) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # an empty cell, the staleness histogram of `dvla metrics`
        return None


def read_rows(run: Path) -> list[dict[str, Any]]:
    """The metric rows of a run directory or of a metrics file (``.jsonl``; ``.csv``: its numbers)."""
    if run.is_dir():
        run = run / "metrics.jsonl"
    if run.suffix != ".csv":
        return read_jsonl(run)
    with run.open(newline="") as f:
        return [{k: v for k, text in row.items() if (v := _number(text)) is not None} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (their metrics.jsonl) or metrics files")
    parser.add_argument("--labels", nargs="*", help="one label per run (default: directory or file names)")
    parser.add_argument("--x", default=m.ENV_STEPS, choices=(m.ENV_STEPS, m.TIME_S), help="x axis")
    parser.add_argument("--title", default="", help="the figure's title")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args()
    labels = args.labels or [r.name.split(".")[0] for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error("give one label per run")
    runs = [(label, read_rows(run)) for label, run in zip(labels, args.runs, strict=True)]
    print(f"wrote {plot_runs(runs, args.out, args.x, args.title)}")


if __name__ == "__main__":
    main()
