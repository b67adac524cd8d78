"""Does asynchrony harm learning? The same job in sync and async mode, same seeds, side by side.

Each (seed, mode) runs the job to ``--steps`` env steps and keeps its metrics. The report
gives, per seed, the sync run's final success rate (mean of its last ``--tail`` rows) and
the env steps each mode needed to first reach it; async passes when it needs at most 10%
more env steps than sync. Over all seeds it averages each mode's curve and gives the env
steps the mean curves need (one seed's figure swings ±50% with the moment it leaves a
plateau). A PNG plots every run and the two mean curves.

    python scripts/learning_async_vs_sync.py examples/reach_ppo.toml --steps 60000 --out runs/modes
    python scripts/learning_async_vs_sync.py examples/reach_ppo.toml --steps 80000 --seeds 5,6,7,8,9,10 \
        --jobs 6 --workers 2 --out runs/modes          # a 16-core machine: six runs at a time
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from dvla.metric_names import ENV_STEPS, EPISODES, SUCCESS_RATE
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
    for r in _warm(rows):
        if r[SUCCESS_RATE] >= target:
            return r[ENV_STEPS]
    return None


MeanCurves = tuple[np.ndarray, dict[str, np.ndarray]] | None
"""A grid of env steps and each mode's success rate on it, averaged over the seeds."""


def _warm(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get(EPISODES, 0) >= WINDOW and SUCCESS_RATE in r]


def mean_curves(runs: dict[tuple[int, str], list[dict]]) -> MeanCurves:
    """Each mode's success rate averaged over the seeds, on one grid of env steps (every run
    interpolated; the grid spans the steps where every run has a full window). None if a run
    never filled its window (too short to compare).

    Why: one seed's curve leaves its plateau at a random moment, so the env steps one seed needs
    vary by ±50% between seeds of the same mode; the seeds' mean is what a mode does."""
    warm = {key: _warm(rows) for key, rows in runs.items()}
    if not all(warm.values()):
        return None
    start = max(rows[0][ENV_STEPS] for rows in warm.values())
    end = min(rows[-1][ENV_STEPS] for rows in warm.values())
    grid = np.arange(start, end, 256.0)
    curves = {mode: np.mean([np.interp(grid, [r[ENV_STEPS] for r in rows], [r[SUCCESS_RATE] for r in rows])
                             for (_, m), rows in warm.items() if m == mode], axis=0) for mode in MODES}
    return grid, curves


def first_reach(grid: np.ndarray, curve: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(curve >= target)
    return float(grid[hit[0]]) if len(hit) else None


def pooled(means: MeanCurves, per_seed: dict[str, dict], tail: int) -> dict:
    """The report over all seeds: the env steps each mode's mean curve needs to reach 0.8, 0.9
    and the sync mean curve's final success (its last ``tail`` grid points, 256 env steps
    apart), and the spread of the per-seed ratios."""
    ratios = [s["async_over_sync_steps"] for s in per_seed.values() if s["async_over_sync_steps"]]
    out: dict = {"seeds": len(per_seed), "per_seed_ratio": None if not ratios else {
        "mean": float(np.mean(ratios)), "median": float(np.median(ratios)), "min": min(ratios),
        "max": max(ratios), "within_10pct": sum(r <= 1.1 for r in ratios), "of": len(ratios)}}
    if means is None:
        return out
    grid, curves = means
    sync_final = float(np.mean(curves["sync"][-tail:]))
    out.update(sync_final_success=sync_final, mean_curve_steps_to={})
    for name, target in (("0.8", 0.8), ("0.9", 0.9), ("sync_final", sync_final)):
        steps = {mode: first_reach(grid, curves[mode], target) for mode in MODES}
        ratio = steps["async"] / steps["sync"] if steps["async"] and steps["sync"] else None
        out["mean_curve_steps_to"][name] = {**steps, "async_over_sync": ratio}
    return out


def _describe(curve: dict | None) -> str:
    """The pooled milestones as one line."""
    if curve is None:
        return "a run never filled its window of episodes: no mean curves"
    parts = []
    for name, v in curve.items():
        ratio = f" ({v['async_over_sync']:.2f}x)" if v["async_over_sync"] else ""
        parts.append(f"{name}: sync {v['sync']}, async {v['async']}{ratio}")
    return "env steps to " + ", ".join(parts)


def plot(runs: dict[tuple[int, str], list[dict]], means: MeanCurves, out: Path) -> None:
    """Every run thin, each mode's mean over the seeds bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"sync": "tab:blue", "async": "tab:orange"}
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for (_, mode), rows in sorted(runs.items()):
        warm = _warm(rows)
        ax.plot([r[ENV_STEPS] for r in warm], [r[SUCCESS_RATE] for r in warm], color=colors[mode],
                alpha=0.25, linewidth=0.8)
    if means is not None:
        seeds = len({s for s, _ in runs})
        for mode in MODES:
            ax.plot(means[0], means[1][mode], color=colors[mode], linewidth=2.2,
                    label=f"{mode}: mean of {seeds} seeds")
        ax.legend(title="thin: one seed each")
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"success rate (last {WINDOW} episodes)")
    ax.set_ylim(0, 1.02)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run_one(args: argparse.Namespace, seed: int, mode: str) -> str:
    """One (seed, mode) run of the job; its metrics land in ``--out``. Returns a summary line."""
    spec = load_spec(args.job)
    spec.job.mode, spec.job.seed = mode, seed
    spec.train.total_env_steps, spec.train.max_minutes, spec.train.resume = args.steps, 0.0, False
    spec.train.checkpoint_every = 0
    if args.workers:
        spec.env.workers = args.workers
    if args.precision:
        spec.resources.precision = args.precision
    metrics = args.out / f"{mode}-seed{seed}.jsonl"
    with TemporaryDirectory() as run_dir:  # checkpoints and event logs are not kept
        run_job(spec, Path(run_dir), quiet=True)
        shutil.copy(Path(run_dir) / "metrics.jsonl", metrics)
    last = read_jsonl(metrics)[-1]
    return (f"seed {seed} {mode:5}: {last[ENV_STEPS]:.0f} env steps, "
            f"final success {last.get(SUCCESS_RATE, float('nan')):.2f}")


def run_all(args: argparse.Namespace, todo: list[tuple[int, str]]) -> None:
    """Every run, ``--jobs`` at a time. Side by side each is a whole job of its own (actor,
    learner, env workers) in a fresh process: learning per env step does not depend on speed."""
    if args.jobs <= 1:
        for seed, mode in todo:
            print(run_one(args, seed, mode), flush=True)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        for done in as_completed([pool.submit(run_one, args, seed, mode) for seed, mode in todo]):
            print(done.result(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", type=Path)
    parser.add_argument("--steps", type=int, default=60_000, help="env steps per run")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds (default: 1)")
    parser.add_argument("--workers", type=int, help="override env.workers (e.g. the machine's cores)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                        help="override resources.precision (fp32 on a GPU: exact behaviour log-probs)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs side by side (default 1); each is a whole job, so give each its cores: "
                             "e.g. --jobs 6 --workers 2 on 16 cores")
    parser.add_argument("--tail", type=int, default=10, help="rows averaged for sync's final success rate")
    parser.add_argument("--replot", action="store_true",
                        help="run nothing: rebuild the report and the PNG from the metrics already in --out")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for each run's metrics.jsonl, the PNG and report.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [(int(seed), mode) for seed in args.seeds.split(",") for mode in MODES]
    if not args.replot:
        run_all(args, todo)
    runs = {(seed, mode): read_jsonl(args.out / f"{mode}-seed{seed}.jsonl") for seed, mode in todo}
    report = {"job": args.job.name, "steps": args.steps, "workers": args.workers,
              "precision": args.precision or "auto", "seeds": {}}
    for seed in sorted({s for s, _ in runs}):
        sync_rows = runs[seed, "sync"]
        target = float(np.mean([r.get(SUCCESS_RATE, 0.0) for r in sync_rows[-args.tail:]]))
        needed = {mode: steps_to_reach(runs[seed, mode], target) for mode in MODES}
        ratio = (needed["async"] / needed["sync"]) if needed["async"] and needed["sync"] else None
        milestones = {f"{m:.1f}": {mode: steps_to_reach(runs[seed, mode], m) for mode in MODES} for m in (0.8, 0.9)}
        report["seeds"][str(seed)] = {"sync_final_success": target, "steps_to_reach": needed,
                                      "steps_to_success": milestones,
                                      "async_over_sync_steps": ratio,
                                      "async_final_success": runs[seed, "async"][-1].get(SUCCESS_RATE)}
        print(f"seed {seed}: sync final success {target:.2f}; env steps to reach it: sync {needed['sync']}, "
              f"async {needed['async']}" + (f" ({ratio:.2f}x)" if ratio else ""))
    means = mean_curves(runs)
    report["pooled"] = pooled(means, report["seeds"], args.tail)
    print(f"mean of {len(report['seeds'])} seeds: {_describe(report['pooled'].get('mean_curve_steps_to'))}")
    plot(runs, means, args.out / "learning_async_vs_sync.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
