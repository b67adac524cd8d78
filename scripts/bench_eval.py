"""Serial vs parallel evaluation of one checkpoint on LIBERO, in one run: the speed-up, and whether
every start gave the same episode.

A random (untrained) policy is written as a run directory's checkpoint (``--policy``: ``tiny-vla`` by
default, or ``transformer-vla`` with ``--policy-args``, e.g. ``{"preset": "1b"}``), then evaluated by
``python -m dvlad.runtime.evaluate`` twice on the same fixed starts (``--tasks`` of ``--suite``,
``--episodes`` init states each): serially (``--workers 1 --envs 1``: one env, one observation a
forward pass) and in parallel (``--workers`` env worker processes, ``--envs`` envs, one batched
forward pass a round). Each is its own process; the figures are the evaluator's own (``build_s``:
starting the workers and building the envs; ``run_s``: the episodes) and the process's wall time.
A random policy rarely ends an episode early, so episodes run to ``--max-episode-steps``. On a GPU,
inference runs in bf16 (the job's precision), whose rounding depends on the batch size: where a start
then gives another episode in parallel, the count is reported (``episodes_differing``), not an error.

    python scripts/bench_eval.py --json                                         # this machine (CPU)
    python scripts/bench_eval.py --device cuda --workers 16 --envs 16 --tasks 0 1 2 3 --episodes 4 \\
        --policy transformer-vla --policy-args '{"preset": "1b"}' --out docs/bench/eval_gpu.json --json

Numbers measured while other work shares the machine's cores are lower than alone: say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dvla.spec import JobSpec
from dvlad.envs.gl import configure_mujoco_gl
from dvlad.envs.libero import CAMERAS, MAX_EPISODE_STEPS
from dvlad.policies import build_policy
from dvlad.policies.checkpoint import save_training_checkpoint
from dvlad.spaces import EnvSpec

POLICY_ARGS = {"tiny-vla": {}, "transformer-vla": {"preset": "tiny"}}


def write_checkpoint(run: Path, args: argparse.Namespace) -> JobSpec:
    """A run directory whose checkpoint is the job's freshly initialised (untrained) policy."""
    spec = JobSpec()
    spec.env.name = "libero"
    spec.env.args = {"suite": args.suite, "tasks": args.tasks, "image_size": args.image_size}
    spec.policy.name, spec.policy.action_chunk = args.policy, args.action_chunk
    spec.policy.args = json.loads(args.policy_args) if args.policy_args else POLICY_ARGS.get(args.policy, {})
    env_spec = EnvSpec(cameras={c: (args.image_size, args.image_size) for c in CAMERAS}, proprio_dim=8,
                       max_episode_steps=MAX_EPISODE_STEPS[args.suite], num_init_states=50)
    device = "cuda" if args.device == "cuda" else "cpu"  # a 1B model initialises in seconds on a GPU
    _, flat = build_policy(spec, env_spec, device)
    save_training_checkpoint(run / "checkpoint.safetensors", flat, {"state": {}}, version=0, trained_env_steps=0,
                             spec=spec)
    return spec


def evaluate(run: Path, args: argparse.Namespace, workers: int, envs: int) -> dict:
    """One evaluation in its own process; its JSON report plus the process's wall time."""
    command = [sys.executable, "-m", "dvlad.runtime.evaluate", str(run), "--tasks", *map(str, args.tasks),
               "--episodes", str(args.episodes), "--max-episode-steps", str(args.max_episode_steps),
               "--workers", str(workers), "--envs", str(envs), "--device", args.device, "--json"]
    print(f"== {workers} worker(s), {envs} env(s)", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    wall_s = time.monotonic() - t0
    if proc.returncode:
        sys.exit(f"the evaluation failed ({' '.join(command)}): exit {proc.returncode}")
    print("\n".join(proc.stdout.strip().splitlines()[:-1]), file=sys.stderr)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["wall_s"] = round(wall_s, 2)
    return report


def main() -> None:
    head, _, rest = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=head, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=rest)
    parser.add_argument("--suite", default="libero_spatial", choices=list(MAX_EPISODE_STEPS))
    parser.add_argument("--tasks", type=int, nargs="+", default=[0, 1], help="task indices (default: 0 1)")
    parser.add_argument("--episodes", type=int, default=3, help="init states per task (default: 3)")
    parser.add_argument("--max-episode-steps", type=int, default=40, help="episode limit (default: 40)")
    parser.add_argument("--image-size", type=int, default=128, help="both cameras' size (default: 128)")
    parser.add_argument("--policy", default="tiny-vla", choices=list(POLICY_ARGS))
    parser.add_argument("--policy-args", help="policy.args as JSON (default: tiny-vla's defaults, "
                                              "transformer-vla's tiny preset)")
    parser.add_argument("--action-chunk", type=int, default=1, help="actions per forward pass (default: 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel run's env workers (default: one per core)")
    parser.add_argument("--envs", type=int, default=0, help="parallel run's envs (default: one per worker: "
                                                           "on a CPU more only cost builds)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where inference runs (default: cuda when torch sees a GPU)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--json", action="store_true", help="print the JSON report as the last line")
    args = parser.parse_args()
    mujoco_gl = configure_mujoco_gl()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        run = Path(tmp)
        write_checkpoint(run, args)
        serial = evaluate(run, args, 1, 1)
        parallel = evaluate(run, args, args.workers, args.envs or args.workers)
    differing = sum(a != b for a, b in zip(serial["per_episode"], parallel["per_episode"], strict=True))
    same = not differing
    keys = ("workers", "envs", "device", "build_s", "run_s", "wall_s", "episodes_per_s", "env_steps_per_s")
    result = {
        "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "mujoco_gl": mujoco_gl, "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "suite": args.suite, "tasks": args.tasks,
        "episodes_per_task": args.episodes, "max_episode_steps": args.max_episode_steps,
        "image_size": args.image_size, "cameras": list(CAMERAS), "policy": args.policy,
        "policy_args": json.loads(args.policy_args) if args.policy_args else POLICY_ARGS[args.policy],
        "action_chunk": args.action_chunk, "episodes": serial["episodes"],
        "env_steps": sum(e["length"] for e in serial["per_episode"]),
        "serial": {k: serial[k] for k in keys}, "parallel": {k: parallel[k] for k in keys},
        "speedup_run": round(serial["run_s"] / parallel["run_s"], 3),
        "speedup_wall": round(serial["wall_s"] / parallel["wall_s"], 3),
        "same_episodes": same, "episodes_differing": differing,
        "mean_success": [serial["mean_success"], parallel["mean_success"]],
    }
    print(f"{result['episodes']} episodes ({result['env_steps']} env steps) of {args.suite} tasks {args.tasks}: "
          f"serial {serial['run_s']:.1f} s + {serial['build_s']:.1f} s to build, parallel ({parallel['workers']} "
          f"workers, {parallel['envs']} envs, {parallel['device']}) {parallel['run_s']:.1f} s + "
          f"{parallel['build_s']:.1f} s: speed-up {result['speedup_run']:.2f}× on the episodes, "
          f"{result['speedup_wall']:.2f}× wall; every start the same episode: {same}")
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
    if not same:  # said, not fatal: a bf16 GPU forward pass rounds by batch size, and an argmax tie may flip
        print(f"{differing} of {result['episodes']} starts gave another episode in parallel than serially",
              file=sys.stderr)


if __name__ == "__main__":
    main()
