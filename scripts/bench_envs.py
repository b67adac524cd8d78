"""Env steps/s per worker, through the real worker path, for 1 … all cores' worth of workers.

Each env runs in an :class:`~dvlad.lanes.env_workers.EnvWorkerPool` of ``w`` workers holding one env
each (one env group), stepped with uniform random actions for ``--seconds`` after a short warm-up;
episodes end and auto-reset as in training (a LIBERO reset includes its 10 settle steps). Printed
per env and worker count: total steps/s, steps/s per worker, and CPU milliseconds per step (the
workers' own CPU time over their steps: the figure that stays meaningful when other work shares
the cores, and the one the ``synthetic`` env's ``step_ms`` models).

``--chunks 1,4`` steps each env with action chunks of those lengths (a worker runs a chunk in one
round trip and, where the env can, renders only its last frame: ``LiberoEnv.step(render=False)``).

Envs measured: LIBERO (libero_spatial, the suite's tasks spread over the workers) with two
128² cameras as configured by default on this machine's renderer, the same with ``fast_render``
off (LIBERO's full-quality frames), physics only (``cameras=False``), ``reach`` and ``synthetic``.

    python scripts/bench_envs.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import psutil

from dvlad.envs.gl import configure_mujoco_gl
from dvlad.lanes.env_workers import EnvWorkerPool
from dvlad.spaces import ACTION_DIM

ENVS: dict[str, tuple[str, dict]] = {
    "libero": ("libero", {"suite": "libero_spatial"}),
    "libero-full-render": ("libero", {"suite": "libero_spatial", "fast_render": False}),
    "libero-physics": ("libero", {"suite": "libero_spatial", "cameras": False}),
    "reach": ("reach", {}),
    "synthetic": ("synthetic", {}),
}


def cpu_seconds(pids: list[int]) -> float:
    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def measure(name: str, args: dict, workers: int, seconds: float, chunk: int = 1) -> dict[str, float]:
    """Steps/s and CPU ms per step of ``workers`` workers with one env each, stepped ``chunk``
    actions at a time."""
    t0 = time.monotonic()
    pool = EnvWorkerPool(name, args, num_envs=workers, groups=1, workers=workers, action_chunk=chunk, seed=0,
                         step_timeout_s=120.0)
    build_s = time.monotonic() - t0
    try:
        rng = np.random.default_rng(0)

        def run(duration: float) -> int:
            steps, start = 0, time.monotonic()
            while time.monotonic() - start < duration:
                pool.step(0, rng.uniform(-1, 1, (workers, chunk, ACTION_DIM)))
                steps += pool.wait(0).env_steps
            return steps

        run(min(3.0, seconds / 4))  # warm-up: first frames, caches
        pids = pool.pids()
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        steps = run(seconds)
        wall, cpu = time.monotonic() - t0, cpu_seconds(pids) - cpu0
    finally:
        pool.close()
    return {"steps_per_s": steps / wall, "steps_per_s_per_worker": steps / wall / workers,
            "cpu_ms_per_step": 1e3 * cpu / steps, "build_s": build_s, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", choices=list(ENVS), default=list(ENVS), help="envs to measure")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per env and worker count")
    parser.add_argument("--max-workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="measure 1 … this many workers (default: the cores of this process)")
    parser.add_argument("--chunks", default="1", help="action chunk lengths to measure, e.g. 1,4 (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores, MUJOCO_GL={configure_mujoco_gl()}, {args.seconds:g} s per measurement, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'env':20} {'chunk':>5} {'workers':>7} {'steps/s':>9} {'per worker':>10} {'CPU ms/step':>11} "
          f"{'build s':>8}")
    results = []
    for env in args.envs:
        name, env_args = ENVS[env]
        for chunk in chunks:
            for workers in range(1, args.max_workers + 1):
                r = measure(name, env_args, workers, args.seconds, chunk)
                results.append({"env": env, "chunk": chunk, "workers": workers, **r})
                print(f"{env:20} {chunk:>5} {workers:>7} {r['steps_per_s']:9.1f} {r['steps_per_s_per_worker']:10.1f} "
                      f"{r['cpu_ms_per_step']:11.2f} {r['build_s']:8.1f}", flush=True)
    if args.json:
        print(json.dumps({"cores": cores, "cpu": platform.processor() or platform.machine(),
                          "mujoco_gl": os.environ["MUJOCO_GL"], "seconds": args.seconds,
                          "env_args": {env: ENVS[env][1] for env in args.envs}, "results": results}))


if __name__ == "__main__":
    main()
