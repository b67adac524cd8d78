"""Async vs sync throughput of the same job, measured side by side in one run.

First each lane's cost is measured alone (``_lane_probe.py``): sample, infer, learn,
publish, and on a GPU the GPU time of sampling (render: EGL-rendered cameras). From them come
two ideals, in seconds per env step:
  sync  = sample + infer + learn + publish           (the lanes take turns; sample includes render)
  async = the busiest resource: lanes sharing cores (or a GPU) add up there, and no lane
          can go faster than it does alone. On a GPU: max(sample, render + infer + learn + publish).
Then the job runs in sync mode and in async mode, same spec otherwise, and the script
prints env steps/s of each, their ratio, the ideal ratio, each mode's efficiency against
its ideal and each lane's busy fraction. ``--json`` prints one JSON object as the last line.

    python scripts/bench_pipeline.py --quick --json                 # CPU, the reach example

``--gpu`` is the headline run on a GPU machine (job: examples/gpu_bench.toml, a ~1B
transformer-trunk VLA on the synthetic env, one worker per core). ``--workload balanced``
first measures the GPU lanes, then sets the synthetic step cost so that simulation takes as
long as the GPU's work (where asynchrony pays most); ``--workload libero`` keeps LIBERO's
measured cost (29 ms of CPU per step). It adds the GPU busy fraction (the union of the
infer, learn and distribute lanes' busy intervals, and NVML's utilisation beside it),
publication against a raw device copy, a worker scaling table, and with ``--plots DIR``
three PNGs (throughput per lane over time, GPU busy over time, staleness histogram).

    python scripts/bench_pipeline.py --gpu --workload balanced --json --plots docs/bench
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from _lane_probe import (
    NvmlSampler,
    gpu_memory_used,
    lane_costs,
    open_pool,
    sample_and_render,
    sample_scaling,
    sample_seconds_per_step,
)
from _pinning import pinned

from dvla import metric_names as m
from dvla.spec import JobSpec, load_spec
from dvlad.lanes.device import Placement, placement_for
from dvlad.lanes.pipeline import Pipeline
from dvlad.lanes.timeline import GPU_LANES, LaneTimeline, covered_seconds

REPO = Path(__file__).resolve().parents[1]
LIBERO_STEP_MS = 29.0
"""LIBERO's measured physics-only CPU cost per step (docs/benchmarks.md): the GPU renders."""
ENV_ARGS = "env.args."
ACTOR_CORES = "actor_cores"
"""A variant key of the bench's own: pin the actor and learner to that many cores (_pinning.py)."""
LANE_COSTS = ("sample", "render", "infer", "learn", "publish")
"""The lanes' costs alone, in the report's order (render: the GPU time of sampling, within sample)."""


def ideals(costs: dict[str, float], spec: JobSpec, placement: Placement, cores: int) -> tuple[float, float]:
    """(sync, async) ideal seconds per env step."""
    s, i, lrn, p = costs["sample"], costs["infer"], costs["learn"], costs["publish"]
    sync = s + i + lrn + p
    sim_cpu = s * min(spec.env.workers, cores)  # core-seconds the workers burn per env step
    # on a GPU, rendering, inference, learning and publication share it and simulation has the
    # cores; on a CPU everything shares the cores. No lane goes faster than it does alone.
    gpu = costs.get("render", 0.0) + i + lrn + p
    busiest = max(s, gpu) if placement.on_gpu else max(s, i, lrn + p, (sim_cpu + i + lrn + p) / cores)
    return sync, busiest


def release_gpu() -> None:
    """Hand the memory cached by this process's allocator back to the device: the next
    phase's learner is another process and cannot use what this one keeps reserved."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sampling_rows(rows: list[dict], sampling_ended_s: float | None) -> list[dict]:
    """The rows of the steady window: without the first (its update includes warm-up) and without
    those made after the actors stopped (the learner trains the rollouts still queued then; counting
    that tail would charge it to the sampling rate)."""
    if sampling_ended_s is not None:
        rows = [r for r in rows if r[m.TIME_S] <= sampling_ended_s] or rows[:1]
    return rows[1:] if len(rows) > 2 else rows


def run_mode(spec: JobSpec, mode: str, steps: int, placement: Placement, actor_cores: int = 0) -> dict:
    """One mode of the job; ``actor_cores`` > 0 pins the actor and learner to that many cores and
    the env workers to the rest (:mod:`_pinning`)."""
    spec.job.mode, spec.train.total_env_steps, spec.train.resume = mode, steps, False
    rows: list[dict] = []
    hist: list[int] = []

    def progress(p) -> None:
        rows.append(p.values)
        hist[len(hist):] = [0] * (len(p.staleness_hist) - len(hist))
        for k, n in enumerate(p.staleness_hist):
            hist[k] += n

    nvml = NvmlSampler(placement.device.index or 0) if placement.on_gpu else None
    with TemporaryDirectory() as tmp:
        pipeline = Pipeline(spec, Path(tmp), on_progress=progress)
        if nvml is not None:
            nvml.start()
        pins = pinned(actor_cores, lambda run=pipeline: run.pool.pids() if run.pool else []) if actor_cores \
            else contextlib.nullcontext()
        with pins:
            pipeline.run()
    steady = _sampling_rows(rows, pipeline.sampling_ended_s)
    t0 = pipeline.timeline_origin
    since, until = t0 + steady[0][m.TIME_S], t0 + steady[-1][m.TIME_S]
    span = until - since
    tl = pipeline.timeline
    gpu_intervals = [iv for lane in GPU_LANES for iv in tl.intervals(lane, since)]
    out = {"steps_per_s": (steady[-1][m.ENV_STEPS] - steady[0][m.ENV_STEPS]) / max(span, 1e-9),
           "staleness_mean": float(np.mean([r[m.STALENESS_MEAN] for r in steady])),
           "staleness_max": max(r[m.STALENESS_MAX] for r in steady),
           "staleness_hist": hist, "updates": len(rows),
           "gpu_busy": covered_seconds(gpu_intervals, since, until) / max(span, 1e-9),
           "gpu_util_nvml": nvml.mean(since, until) if nvml is not None else None,
           "timeline": tl, "window": (since, until), "workers": spec.env.workers,
           # the share of the window the actor sat at the staleness gate, waiting for a version
           # (the other wait, for a busy GPU, shows as sample-lane idle time the gate does not hold)
           "gate_wait": (steady[-1][m.WEIGHT_WAIT_S] - steady[0][m.WEIGHT_WAIT_S]) / max(span, 1e-9)}
    summary = tl.summary(since, until, parallel={"sample": spec.env.workers})
    for lane in m.LANES:
        out[f"{lane}_busy"] = summary[lane]["busy"]
    for lane in ("infer", "learn"):  # seconds per inference batch, per learner update
        spans = [iv.end - iv.start for iv in tl.intervals(lane, since) if iv.end <= until]
        out[f"{lane}_s_each"] = float(np.mean(spans)) if spans else None
    out["publish_ms"] = float(np.mean([r[m.PUBLISH_MS] for r in steady if m.PUBLISH_MS in r] or [0]))
    del pipeline
    release_gpu()
    return out


def balance(spec: JobSpec, costs: dict[str, float], seconds: float) -> None:
    """Set the synthetic step cost so that simulating a step takes as long as the GPU's work
    for it, and re-measure the sample lane at that cost."""
    gpu_s = costs["infer"] + costs["learn"] + costs["publish"]
    spec.env.args["step_ms"] = 1e3 * gpu_s * spec.env.workers  # workers step their envs in parallel
    with open_pool(spec) as pool:
        sample_seconds_per_step(pool, 0.5)
        costs["sample"] = sample_seconds_per_step(pool, seconds)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(results: dict, out_dir: Path, tag: str) -> list[Path]:
    """Throughput per lane over time, GPU busy over time, staleness histogram (async mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True, sharey=True)
    for ax, mode in zip(axes, ("sync", "async"), strict=True):
        r = results[mode]
        tl: LaneTimeline = r["timeline"]
        since, until = r["window"]
        edges = np.arange(since, until + 1.0, 1.0)
        for lane in ("sample", "infer", "learn"):
            items = np.zeros(len(edges) - 1)
            for iv in tl.intervals(lane, since):
                k = np.searchsorted(edges, iv.end) - 1
                if 0 <= k < len(items):
                    items[k] += iv.items
            ax.plot(edges[:-1] - since, items, label=lane)
        ax.set_title(f"{mode}: items per second by lane")
        ax.set_xlabel("seconds")
        ax.legend()
    paths.append(_save(fig, out_dir / f"pipeline_{tag}_lanes.png"))

    fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    for mode in ("sync", "async"):
        r = results[mode]
        tl, (since, until) = r["timeline"], r["window"]
        ivs = [iv for lane in GPU_LANES for iv in tl.intervals(lane, since)]
        edges = np.arange(since, until, 0.5)
        busy = [covered_seconds(ivs, a, a + 0.5) / 0.5 for a in edges]
        ax.plot(edges - since, busy, label=f"{mode} (mean {r['gpu_busy']:.0%})")
    ax.set_ylim(0, 1.05)
    ax.set_title("GPU busy (infer ∪ learn ∪ distribute), 0.5 s bins")
    ax.set_xlabel("seconds")
    ax.legend()
    paths.append(_save(fig, out_dir / f"pipeline_{tag}_gpu_busy.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    hist = results["async"]["staleness_hist"]
    ax.bar(range(len(hist)), hist)
    ax.set_title("async: staleness of trained samples")
    ax.set_xlabel("versions behind the learner")
    ax.set_ylabel("samples")
    paths.append(_save(fig, out_dir / f"pipeline_{tag}_staleness.png"))
    return paths


def slowdowns(spec: JobSpec, costs: dict[str, float], r: dict) -> dict[str, float | None]:
    """How much longer an inference batch and a learner update took inside the run than alone.

    Why: in sync mode the lanes take turns, so both read ~1; in async mode they share the
    device, and this says what that sharing costs each of them."""
    alone = {"infer": costs["infer"] * spec.env.num_envs / spec.env.groups,  # one group's batch
             "learn": costs["learn"] * spec.pipeline.segment_steps * spec.env.num_envs * spec.policy.action_chunk}
    return {lane: None if r[f"{lane}_s_each"] is None else r[f"{lane}_s_each"] / alone[lane]
            for lane in ("infer", "learn")}


@contextlib.contextmanager
def variant_settings(spec: JobSpec, variant: str) -> Iterator[None]:
    """Apply ``variant``'s settings to ``spec`` for the ``with`` block, then restore them.

    ``variant`` is ``KEY=VALUE`` pairs joined by commas; KEY is a ``[pipeline]`` setting or
    ``SECTION.KEY`` (``actor_cores``, the bench's own, is left to :func:`actor_cores_of`), or
    ``env.args.NAME`` (an env argument, its value read as JSON, else as a string). Each other
    value is parsed as the type the setting has (booleans from true/false/1/0/yes/no). Raises
    ValueError naming what is wrong."""
    changes = []
    env_args: dict = {}
    for pair in variant.split(","):
        key, eq, value = pair.partition("=")
        if key == ACTOR_CORES:
            continue
        if key.startswith(ENV_ARGS) and eq:
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
            env_args[key.removeprefix(ENV_ARGS)] = value
            continue
        section, _, name = key.rpartition(".")
        table = getattr(spec, section or "pipeline", None)
        if not eq or table is None or not hasattr(table, name):
            raise ValueError(f"expected KEY=VALUE with KEY a [pipeline] setting ({', '.join(vars(spec.pipeline))}) "
                             f"or SECTION.KEY, got {pair!r}")
        kept = getattr(table, name)
        if not isinstance(kept, bool | int | float | str):
            raise ValueError(f"{key} is not a scalar setting")
        if isinstance(kept, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"{key} is a boolean, got {value!r}")
            parsed = value.lower() in ("1", "true", "yes")
        else:
            parsed = type(kept)(value)
        changes.append((table, name, kept, parsed))
    kept_args = dict(spec.env.args)
    try:
        for table, name, _, parsed in changes:
            setattr(table, name, parsed)
        spec.env.args.update(env_args)
        yield
    finally:
        for table, name, kept, _ in reversed(changes):
            setattr(table, name, kept)
        spec.env.args.clear()
        spec.env.args.update(kept_args)


def actor_cores_of(variant: str) -> int:
    """The variant's ``actor_cores=K`` (0: not pinned)."""
    pairs = dict(pair.partition("=")[::2] for pair in variant.split(","))
    return int(pairs.get(ACTOR_CORES, 0))


def _gpu(r: dict, placement: Placement) -> str:
    """The GPU busy share for the table ("–" on a CPU, where the lanes share the cores instead)."""
    return f"{r['gpu_busy']:.0%}" if placement.on_gpu else "–"


def _times(slow: dict[str, float | None]) -> str:
    return " / ".join("n/a" if v is None else f"{v:.2f}x" for v in slow.values())


def measure(spec: JobSpec, placement: Placement, costs: dict[str, float], steps: int, label: str,
            plots: Path | None, variants: list[str]) -> dict:
    """Both modes of one workload against its ideals: the report's figures, printed as a table.

    ``variants``: one more async run for each set of settings (:func:`variant_settings`),
    reported beside the job's own under ``async_variants``; the headline figures stay the job's."""
    cores = len(os.sched_getaffinity(0))
    sync_ideal, async_ideal = ideals(costs, spec, placement, cores)
    print(f"\n[{label}] lane cost alone (ms per env step): " + ", ".join(
        f"{k} {1e3 * costs[k]:.3f}" for k in LANE_COSTS)
          + f"   (synthetic step {spec.env.args.get('step_ms', '-')} ms)", flush=True)
    results = {}
    for mode in ("sync", "async"):  # each printed as soon as measured: a run cut short keeps what it had
        results[mode] = run_mode(spec, mode, steps, placement)
        _measured(mode, results[mode], placement)
    sync, asyn = results["sync"], results["async"]
    extra = {}
    for variant in variants:
        with variant_settings(spec, variant):
            extra[variant] = run_mode(spec, "async", steps, placement_for(spec), actor_cores_of(variant))
            extra[variant]["slowdown_vs_alone"] = slowdowns(spec, costs, extra[variant])  # at its sizes
        _measured(f"async with {variant}", extra[variant], placement)
    ratio = asyn["steps_per_s"] / sync["steps_per_s"]
    ideal_ratio = sync_ideal / async_ideal
    report = {
        "async_steps_per_s": asyn["steps_per_s"], "sync_steps_per_s": sync["steps_per_s"],
        "ratio": ratio, "ideal_ratio": ideal_ratio,
        "sync_efficiency": sync["steps_per_s"] * sync_ideal,
        "async_efficiency": asyn["steps_per_s"] * async_ideal,
        "lane_ms_per_step": {k: 1e3 * costs[k] for k in LANE_COSTS},
        "publish_ms": costs["publish_ms"], "raw_copy_ms": costs["raw_copy_ms"],
        "staleness_mean": asyn["staleness_mean"], "staleness_max": asyn["staleness_max"],
        "busy": {mode: {lane: r[f"{lane}_busy"] for lane in m.LANES} for mode, r in results.items()},
        "gpu_busy": asyn["gpu_busy"] if placement.on_gpu else None,
        "gpu_busy_sync": sync["gpu_busy"] if placement.on_gpu else None,
        "gpu_util_nvml": {mode: r["gpu_util_nvml"] for mode, r in results.items()},
        "gate_wait": {mode: r["gate_wait"] for mode, r in results.items()},
        "slowdown_vs_alone": {mode: slowdowns(spec, costs, r) for mode, r in results.items()},
        "pipeline": {"max_staleness": spec.pipeline.max_staleness, "learner": spec.pipeline.learner,
                     "learner_thread": placement.learner_thread},
        "async_variants": {name: _summary(r, async_ideal, sync["steps_per_s"]) for name, r in extra.items()},
        "device": torch.cuda.get_device_name(placement.device) if placement.on_gpu else "cpu",
        "cpu": platform.processor() or platform.machine(), "cores": cores,
        "model_params": int(costs["model_params"]), "published_params": int(costs["published_params"]),
        "policy": spec.policy.name, "policy_args": spec.policy.args,
        "env": ":".join(filter(None, (spec.env.name, spec.env.args.get("suite")))),
        "env_args": dict(spec.env.args), "workers": spec.env.workers, "num_envs": spec.env.num_envs,
        "workload": label, "env_steps_per_mode": steps,
    }
    print(f"{'mode':6} {'steps/s':>9} {'ideal':>9} {'effic.':>7}   busy: sample infer  learn  distr    GPU")
    for mode, r, ideal in (("sync", sync, sync_ideal), ("async", asyn, async_ideal)):
        print(f"{mode:6} {r['steps_per_s']:9.1f} {1 / ideal:9.1f} {r['steps_per_s'] * ideal:7.2f}         "
              + "  ".join(f"{r[f'{lane}_busy']:5.0%}" for lane in m.LANES) + f"  {_gpu(r, placement):>5}")
    print(f"async/sync = {ratio:.2f}x   ideal = {ideal_ratio:.2f}x   "
          f"staleness mean {asyn['staleness_mean']:.2f} max {asyn['staleness_max']:.0f}   "
          f"actor at the staleness gate {asyn['gate_wait']:.0%}   "
          f"publish {costs['publish_ms']:.2f} ms (raw copy {costs['raw_copy_ms']:.2f} ms)", flush=True)
    print("time per inference batch / per learner update against alone: " + ", ".join(
        f"{mode} {_times(slow)}" for mode, slow in report["slowdown_vs_alone"].items()), flush=True)
    for name, r in extra.items():
        print(f"async with {name}: {r['steps_per_s']:.1f} steps/s = "
              f"{r['steps_per_s'] / sync['steps_per_s']:.2f}x sync, "
              f"efficiency {r['steps_per_s'] * async_ideal:.2f}, GPU busy {_gpu(r, placement)}, "
              f"staleness mean {r['staleness_mean']:.2f} max {r['staleness_max']:.0f}, "
              f"actor at the gate {r['gate_wait']:.0%}, inference batch / learner update against alone "
              f"{_times(r['slowdown_vs_alone'])}", flush=True)
    if plots is not None:
        for path in plot(results, plots, label):
            print(f"wrote {path}")
    return report


def _measured(name: str, r: dict, placement: Placement) -> None:
    """One run's figures, printed as soon as it ends (the table follows once every run has)."""
    print(f"measured {name}: {r['steps_per_s']:.1f} env steps/s, GPU busy {_gpu(r, placement)}, "
          f"NVML {r['gpu_util_nvml'] if r['gpu_util_nvml'] is None else format(r['gpu_util_nvml'], '.0%')}, "
          f"inference batch {r['infer_s_each']} s, learner update {r['learn_s_each']} s", flush=True)


def _summary(r: dict, async_ideal: float, sync_steps_per_s: float) -> dict:
    """The report's figures of one extra async run."""
    return {"steps_per_s": r["steps_per_s"], "ratio": r["steps_per_s"] / sync_steps_per_s,
            "efficiency": r["steps_per_s"] * async_ideal, "gpu_busy": r["gpu_busy"],
            "staleness_mean": r["staleness_mean"], "staleness_max": r["staleness_max"],
            "gate_wait": r["gate_wait"], "busy": {lane: r[f"{lane}_busy"] for lane in m.LANES},
            "slowdown_vs_alone": r["slowdown_vs_alone"]}


def sample_costs(spec: JobSpec, placement: Placement, variants: list[str], seconds: float) -> dict[str, dict]:
    """The sample lane alone, and the GPU time of its rendering, for the job's env settings and each
    variant's (ms per env step), each printed as soon as measured."""
    rows = {}
    gpu = placement.device.index or 0
    for variant in ["job", *variants]:
        settings = contextlib.nullcontext() if variant == "job" else variant_settings(spec, variant)
        before = gpu_memory_used(gpu) if placement.on_gpu else None
        with settings, open_pool(spec) as pool:  # the pool opened with the variant's settings
            sample, render = sample_and_render(pool, placement, seconds)
            during = gpu_memory_used(gpu) if before is not None else None
            chunk = spec.policy.action_chunk
        mib_per_env = None if during is None else (during - before) / 2**20 / spec.env.num_envs
        rows[variant] = {"sample_ms": 1e3 * sample, "render_ms": 1e3 * render, "steps_per_s": 1 / sample,
                         "mib_per_env": mib_per_env, "action_chunk": chunk}
        print(f"sample lane with {variant}: {1e3 * sample:.3f} ms per env step ({1 / sample:.1f} steps/s), "
              f"rendering {1e3 * render:.3f} ms of GPU per env step"
              + ("" if mib_per_env is None else f", {mib_per_env:.1f} MiB of GPU memory per env"), flush=True)
    return rows


def worker_scaling(spec: JobSpec, counts: list[int], seconds: float) -> dict[str, dict]:
    """The sample lane alone with 1, 2, 4 … workers, printed, as the report's keys."""
    table = sample_scaling(spec, counts, seconds)
    print(f"\nworker scaling of the sample lane alone (synthetic step {spec.env.args.get('step_ms')} ms)")
    print("workers " + " ".join(f"{n:>7}" for n in counts))
    print("steps/s " + " ".join(f"{table[n]['steps_per_s']:7.1f}" for n in counts))
    print("effic.  " + " ".join(f"{table[n]['efficiency']:7.2f}" for n in counts), flush=True)
    return {"scaling": {str(n): s["efficiency"] for n, s in table.items()},
            "scaling_steps_per_s": {str(n): s["steps_per_s"] for n, s in table.items()},
            "scaling_step_ms": spec.env.args.get("step_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, help="job file to measure (default: examples/reach_ppo.toml, "
                                                 "with --gpu examples/gpu_bench.toml)")
    parser.add_argument("--steps", type=int, help="env steps per mode (default 30 000; --gpu 8 000)")
    parser.add_argument("--workers", type=int, help="env workers (default: the job's); env.num_envs must "
                                                    "stay divisible by groups × workers")
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--gpu", action="store_true", help="the headline GPU run (see above)")
    parser.add_argument("--workload", choices=("balanced", "libero", "both", "job"), default="balanced",
                        help="with --gpu: the synthetic env's step cost (default: balanced); both share "
                             "one measurement of the GPU lanes; job: the job's env as it is (real LIBERO "
                             "with examples/gpu_bench_libero.toml)")
    parser.add_argument("--libero-steps", type=int, help="with --workload both: env steps per mode of the "
                                                         "LIBERO-cost runs (default: --steps)")
    parser.add_argument("--scaling", default="1,2,4,8,16",
                        help="with --gpu: worker counts of the scaling table ('' skips it)")
    parser.add_argument("--async-variant", action="append", default=[], metavar="KEY=VALUE[,...]",
                        help="one more async run with these job settings, reported beside the job's own "
                             "(repeatable). KEY is a [pipeline] setting or SECTION.KEY: e.g. "
                             "max_staleness=2, learner=thread, compile_actor=true,learner=thread, env.groups=4; "
                             "actor_cores=K pins the actor and learner to K cores, the env workers to the rest; "
                             "env.args.NAME=JSON sets an env argument, e.g. env.args.fast_render=true")
    parser.add_argument("--sample-only", action="store_true",
                        help="measure only the sample lane (and on a GPU its rendering) of the job and of each "
                             "--async-variant's env settings, print them side by side and stop: what a render "
                             "setting costs, in a minute or two, without the model")
    parser.add_argument("--plots", type=Path, help="with --gpu: write the three PNGs per workload here")
    parser.add_argument("--report-dir", type=Path, help="with --gpu: write pipeline_gpu[_libero].json here "
                                                        "(--workload job: pipeline_gpu_ENV_real.json)")
    parser.add_argument("--report-name", help="with --report-dir: the file name instead")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line "
                                                            "(with --workload both: {workload: report})")
    args = parser.parse_args()
    job = args.job or REPO / "examples" / ("gpu_bench.toml" if args.gpu else "reach_ppo.toml")
    spec = load_spec(job)
    if args.workers:
        spec.env.workers = args.workers
    for variant in args.async_variant:  # refused now, not after the first mode has run
        try:
            with variant_settings(spec, variant):
                pass
        except ValueError as e:
            parser.error(f"--async-variant {variant!r}: {e}")
    if args.gpu:
        spec.resources.device = "cuda"
    placement = placement_for(spec)
    steps = args.steps or (8_000 if args.gpu else 30_000)
    probe_s = 6.0
    if args.quick:
        steps, probe_s = 6_000, 2.0  # ~11 updates: fewer leave a window of 3 or 4, all noise
        spec.pipeline.segment_steps = min(spec.pipeline.segment_steps, 16)
        spec.algo.update_epochs = 1
    workloads = ([] if not args.gpu else ["balanced", "libero"] if args.workload == "both" else [args.workload])
    print(f"job {job.name}: env {spec.env.name}, {spec.env.num_envs} envs in {spec.env.groups} groups on "
          f"{spec.env.workers} workers, policy {spec.policy.name}, {len(os.sched_getaffinity(0))} cores, "
          f"{torch.cuda.get_device_name(placement.device) if placement.on_gpu else 'cpu'}, "
          f"{steps} env steps per mode", flush=True)
    if args.sample_only:
        rows = sample_costs(spec, placement, args.async_variant, probe_s)
        if args.json:
            print(json.dumps(rows))
        return
    if "libero" in workloads:
        spec.env.args["step_ms"] = LIBERO_STEP_MS
    measured = lane_costs(spec, placement, probe_s)  # the GPU lanes' costs hold for every workload
    release_gpu()
    reports: dict[str, dict] = {}
    scaling: dict[str, dict] = {}
    for workload in workloads or ["job"]:
        costs = dict(measured)  # the sample cost in it is LIBERO's when that workload was asked for
        if workload == "balanced":
            balance(spec, costs, probe_s)
        elif workload == "libero":
            spec.env.args["step_ms"] = LIBERO_STEP_MS
        n = args.libero_steps if workload == "libero" and args.libero_steps else steps
        report = reports[workload] = measure(spec, placement, costs, n, workload,
                                             args.plots if args.gpu else None, args.async_variant)
        report.update(quick=args.quick, job=job.name)
        if args.gpu and args.scaling and not scaling:  # once, at the first workload's step cost
            scaling = worker_scaling(spec, [int(n) for n in args.scaling.split(",")], 1.0 if args.quick else 3.0)
        report.update(scaling)
        if args.report_dir:  # each workload's report as soon as it is measured
            args.report_dir.mkdir(parents=True, exist_ok=True)
            name = args.report_name or ("pipeline_gpu.json" if workload == "balanced" else
                                        f"pipeline_gpu_{spec.env.name}_real.json" if workload == "job" else
                                        f"pipeline_gpu_{workload}.json")
            path = args.report_dir / name
            path.write_text(json.dumps(report, indent=1) + "\n")
            print(f"wrote {path}", flush=True)
    if args.json:
        print(json.dumps(next(iter(reports.values())) if len(reports) == 1 else reports))


if __name__ == "__main__":
    main()
