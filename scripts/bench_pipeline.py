"""Async vs sync throughput of the same job, measured side by side in one run.

First each lane's cost is measured alone, with the job's own code and sizes:
  sample  — the env workers stepping every group with random actions (no inference),
  infer   — the policy acting on one env group's batch,
  learn   — one learner update on a rollout of the job's size,
  publish — one weight publication through the weight plane.
From them come two ideals, in seconds per env step:
  sync  = sample + infer + learn + publish           (the lanes take turns)
  async = the busiest resource: lanes sharing cores (or a GPU) add up there, and no lane
          can go faster than it does alone.
Then the job runs in sync mode and in async mode, same spec otherwise, and the script
prints env steps/s of each, their ratio, the ideal ratio, each mode's efficiency against
its ideal and each lane's busy fraction. ``--json`` prints one JSON object as the last line.

    python scripts/bench_pipeline.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

from dvla.spec import JobSpec, load_spec
from dvlad.envs.vector import CMD_STEP, EnvWorkerPool
from dvlad.lanes.actor import Actor, ActorConfig
from dvlad.lanes.learner import Learner, LearnerConfig
from dvlad.lanes.pipeline import Pipeline
from dvlad.lanes.timeline import LaneTimeline
from dvlad.lanes.trajectory import SegmentShape, TrajectoryQueue
from dvlad.lanes.weights import WeightPlane

REPO = Path(__file__).resolve().parents[1]


def lane_costs(spec: JobSpec, seconds: float) -> dict[str, float]:
    """Seconds per env step of each lane run alone."""
    torch.set_num_threads(spec.resources.torch_threads)
    pool = EnvWorkerPool(spec.env.name, dict(spec.env.args), num_envs=spec.env.num_envs,
                         groups=spec.env.groups, workers=spec.env.workers,
                         action_chunk=spec.policy.action_chunk, seed=spec.job.seed)
    try:
        slots = pool.slots
        assert slots is not None
        rng = np.random.default_rng(0)
        steps, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            slots["action"][:] = rng.uniform(-1, 1, slots["action"].shape)
            slots["command"][:] = CMD_STEP
            for g in range(pool.groups):
                pool.send(g)
            steps += sum(pool.wait(g).env_steps for g in range(pool.groups))
        sample = (time.monotonic() - t0) / steps

        with TemporaryDirectory() as tmp:
            learner = Learner(LearnerConfig(spec, pool.spec, tmp, pool.groups))
        ctx = mp.get_context("spawn")
        shape = SegmentShape(spec.pipeline.segment_steps, pool.envs_per_group, spec.policy.action_chunk,
                             learner.policy.max_instruction_tokens)
        traj = TrajectoryQueue.create(ctx, pool.spec, shape, pool.groups)
        plane = WeightPlane.create(ctx, learner.flat.numel())
        try:
            actor = Actor(pool, learner.policy, learner.flat, plane, traj,
                          ActorConfig(shape.steps, 0, True), LaneTimeline())
            obs, _ = actor._read_obs(pool.group_slice(0))
            with torch.no_grad():
                learner.policy.act(obs)
                n, t0 = 0, time.monotonic()
                while time.monotonic() - t0 < seconds / 2:
                    learner.policy.act(obs)
                    n += 1
            infer = (time.monotonic() - t0) / (n * pool.envs_per_group)

            segments = []
            for g in range(pool.groups):  # real observations, every row valid
                seg = {k: v.copy() for k, v in traj.view(g).items()}
                for k in seg:
                    if k.startswith("image/") or k in ("proprio", "instruction"):
                        name = k.split("/", 1)[-1]
                        row = obs.images[name] if k.startswith("image/") else getattr(obs, k)
                        seg[k][:] = row.numpy()
                seg["valid"][:] = True
                seg["env_steps"][:] = spec.policy.action_chunk
                segments.append(seg)
            learner.update(segments)  # warm-up
            t0 = time.monotonic()
            updates = 2
            for _ in range(updates):
                learner.update(segments)
            rollout_steps = shape.steps * spec.env.num_envs * spec.policy.action_chunk
            learn = (time.monotonic() - t0) / (updates * rollout_steps)
            publish_s = float(np.median([plane.publish(learner.flat, v) for v in range(20)]))
        finally:
            traj.close()
            plane.close()
    finally:
        pool.close()
    return {"sample": sample, "infer": infer, "learn": learn, "publish": publish_s / rollout_steps,
            "publish_ms": publish_s * 1e3}


def ideals(costs: dict[str, float], spec: JobSpec, cores: int) -> tuple[float, float]:
    """(sync, async) ideal seconds per env step."""
    s, i, lrn, p = costs["sample"], costs["infer"], costs["learn"], costs["publish"]
    sync = s + i + lrn + p
    on_gpu = spec.resources.device == "cuda"
    sim_cpu = s * min(spec.env.workers, cores)  # core-seconds the workers burn per env step
    # on a GPU, inference, learning and publication share it and simulation has the cores;
    # on a CPU everything shares the cores. No lane goes faster than it does alone.
    busiest = max(s, i + lrn + p) if on_gpu else max(s, i, lrn + p, (sim_cpu + i + lrn + p) / cores)
    return sync, busiest


def run_mode(spec: JobSpec, mode: str, steps: int) -> dict[str, float]:
    spec.job.mode, spec.train.total_env_steps, spec.train.resume = mode, steps, False
    rows: list[dict] = []
    with TemporaryDirectory() as tmp:
        Pipeline(spec, Path(tmp), on_progress=lambda p: rows.append(p.values)).run()
    steady = rows[1:] if len(rows) > 2 else rows  # the first update includes warm-up
    span = steady[-1]["time_s"] - steady[0]["time_s"]
    # rows carry a per-window throughput and lane busy fractions; weight them by window length
    out = {"steps_per_s": (steady[-1]["env_steps"] - steady[0]["env_steps"]) / max(span, 1e-9),
           "staleness_mean": float(np.mean([r.get("staleness_mean", 0) for r in steady])),
           "staleness_max": max(r.get("staleness_max", 0) for r in steady),
           "updates": len(rows)}
    for lane in ("sample", "infer", "learn", "distribute"):
        out[f"{lane}_busy"] = float(np.mean([r[f"{lane}_busy"] for r in steady[1:] or steady]))
    out["publish_ms"] = float(np.mean([r["publish_ms"] for r in steady if "publish_ms" in r] or [0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, default=REPO / "examples" / "reach_ppo.toml",
                        help="job file to measure (default: the reach PPO example)")
    parser.add_argument("--steps", type=int, default=30_000, help="env steps per mode")
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    spec = load_spec(args.job)
    steps, probe_s = (args.steps, 6.0) if not args.quick else (3_000, 2.0)
    if args.quick:
        spec.pipeline.segment_steps = min(spec.pipeline.segment_steps, 16)
        spec.algo.update_epochs = 1
    cores = len(os.sched_getaffinity(0))

    print(f"job {args.job.name}: env {spec.env.name}, {spec.env.num_envs} envs in {spec.env.groups} groups on "
          f"{spec.env.workers} workers, policy {spec.policy.name}, {cores} cores, {steps} env steps per mode")
    costs = lane_costs(spec, probe_s)
    sync_ideal, async_ideal = ideals(costs, spec, cores)
    print("lane cost alone (ms per env step): " + ", ".join(
        f"{k} {1e3 * costs[k]:.3f}" for k in ("sample", "infer", "learn", "publish")))
    results = {mode: run_mode(spec, mode, steps) for mode in ("sync", "async")}
    sync, asyn = results["sync"], results["async"]
    ratio = asyn["steps_per_s"] / sync["steps_per_s"]
    ideal_ratio = sync_ideal / async_ideal
    report = {
        "async_steps_per_s": asyn["steps_per_s"], "sync_steps_per_s": sync["steps_per_s"],
        "ratio": ratio, "ideal_ratio": ideal_ratio,
        "sync_efficiency": sync["steps_per_s"] * sync_ideal,
        "async_efficiency": asyn["steps_per_s"] * async_ideal,
        "lane_ms_per_step": {k: 1e3 * costs[k] for k in ("sample", "infer", "learn", "publish")},
        "publish_ms": costs["publish_ms"],
        "staleness_mean": asyn["staleness_mean"], "staleness_max": asyn["staleness_max"],
        "busy": {mode: {lane: r[f"{lane}_busy"] for lane in ("sample", "infer", "learn", "distribute")}
                 for mode, r in results.items()},
        "device": spec.resources.device if spec.resources.device != "auto" else "cpu",
        "cpu": platform.processor() or platform.machine(), "cores": cores,
        "job": args.job.name, "env_steps_per_mode": steps, "quick": args.quick,
    }
    print(f"\n{'mode':6} {'steps/s':>9} {'ideal':>9} {'effic.':>7}   busy: sample infer  learn  distr")
    for mode, r, ideal in (("sync", sync, sync_ideal), ("async", asyn, async_ideal)):
        print(f"{mode:6} {r['steps_per_s']:9.1f} {1 / ideal:9.1f} {r['steps_per_s'] * ideal:7.2f}         "
              + "  ".join(f"{r[f'{lane}_busy']:5.0%}" for lane in ("sample", "infer", "learn", "distribute")))
    print(f"\nasync/sync = {ratio:.2f}x   ideal = {ideal_ratio:.2f}x   "
          f"staleness mean {asyn['staleness_mean']:.2f} max {asyn['staleness_max']:.0f}   "
          f"publish {costs['publish_ms']:.2f} ms")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
