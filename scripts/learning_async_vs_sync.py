"""Does asynchrony harm learning? The same job in sync and async mode, same seeds, side by side.

Each (seed, mode) runs the job to ``--steps`` env steps and keeps its metrics. The report
gives, per seed, the sync run's final success rate (mean of its last ``--tail`` rows) and
the env steps each mode needed to first reach it; async passes when it needs at most 10%
more env steps than sync. A PNG plots success rate against env steps for every run.

    python scripts/learning_async_vs_sync.py examples/reach_ppo.toml --steps 60000 --out runs/modes
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from dvla.spec import load_spec
from dvlad.runtime.job import run_job
from dvlad.runtime.metrics import read_jsonl

MODES = ("sync", "async")


WINDOW = 100
"""Episodes behind each row's success rate once the run is warm: earlier rows average a
handful of episodes, biased towards the short (successful) ones."""


def steps_to_reach(rows: list[dict], target: float) -> float | None:
    """Env steps at the first row whose success rate over a full window reaches ``target``
    (None: never)."""
    for r in rows:
        if r.get("episodes", 0) >= WINDOW and r.get("success_rate", 0.0) >= target:
            return r["env_steps"]
    return None


def plot(runs: dict[tuple[int, str], list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for (seed, mode), rows in sorted(runs.items()):
        warm = [r for r in rows if r.get("episodes", 0) >= WINDOW and "success_rate" in r]
        xs, ys = [r["env_steps"] for r in warm], [r["success_rate"] for r in warm]
        ax.plot(xs, ys, label=f"{mode}, seed {seed}", linestyle="-" if mode == "async" else "--")
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"success rate (last {WINDOW} episodes)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", type=Path)
    parser.add_argument("--steps", type=int, default=60_000, help="env steps per run")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds (default: 1)")
    parser.add_argument("--workers", type=int, help="override env.workers (e.g. the machine's cores)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                        help="override resources.precision (fp32 on a GPU: exact behaviour log-probs)")
    parser.add_argument("--tail", type=int, default=10, help="rows averaged for sync's final success rate")
    parser.add_argument("--replot", action="store_true",
                        help="run nothing: rebuild the report and the PNG from the metrics already in --out")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for each run's metrics.jsonl, the PNG and report.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[int, str], list[dict]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for mode in MODES:
            if args.replot:
                runs[seed, mode] = read_jsonl(args.out / f"{mode}-seed{seed}.jsonl")
                continue
            spec = load_spec(args.job)
            spec.job.mode, spec.job.seed = mode, seed
            spec.train.total_env_steps, spec.train.max_minutes, spec.train.resume = args.steps, 0.0, False
            spec.train.checkpoint_every = 0
            if args.workers:
                spec.env.workers = args.workers
            if args.precision:
                spec.resources.precision = args.precision
            with TemporaryDirectory() as run_dir:  # checkpoints and event logs are not kept
                run_job(spec, Path(run_dir), quiet=True)
                shutil.copy(Path(run_dir) / "metrics.jsonl", args.out / f"{mode}-seed{seed}.jsonl")
            runs[seed, mode] = read_jsonl(args.out / f"{mode}-seed{seed}.jsonl")
            print(f"seed {seed} {mode:5}: {runs[seed, mode][-1]['env_steps']:.0f} env steps, "
                  f"final success {runs[seed, mode][-1].get('success_rate', float('nan')):.2f}", flush=True)
    report = {"job": args.job.name, "steps": args.steps, "workers": args.workers,
              "precision": args.precision or "auto", "seeds": {}}
    for seed in sorted({s for s, _ in runs}):
        sync_rows = runs[seed, "sync"]
        target = float(np.mean([r.get("success_rate", 0.0) for r in sync_rows[-args.tail:]]))
        needed = {mode: steps_to_reach(runs[seed, mode], target) for mode in MODES}
        ratio = (needed["async"] / needed["sync"]) if needed["async"] and needed["sync"] else None
        milestones = {f"{m:.1f}": {mode: steps_to_reach(runs[seed, mode], m) for mode in MODES} for m in (0.8, 0.9)}
        report["seeds"][str(seed)] = {"sync_final_success": target, "steps_to_reach": needed,
                                      "steps_to_success": milestones,
                                      "async_over_sync_steps": ratio,
                                      "async_final_success": runs[seed, "async"][-1].get("success_rate")}
        print(f"seed {seed}: sync final success {target:.2f}; env steps to reach it: sync {needed['sync']}, "
              f"async {needed['async']}" + (f" ({ratio:.2f}x)" if ratio else ""))
    plot(runs, args.out / "learning_async_vs_sync.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
