"""Evaluate a trained policy: ``python -m dvlad.runtime.evaluate RUN_DIR``.

The policy and the env are rebuilt from the job spec stored in the checkpoint, so the cameras, image
size and policy arguments are the ones it was trained with; every action is the policy's most likely
one (greedy), and every episode starts from a fixed start, the same for every policy, so numbers
compare. Any env the job trained on is evaluated the same way (:mod:`dvlad.runtime.eval_episodes`):
``--workers`` env worker processes step ``--envs`` envs at once, one batched forward pass on
``--device`` (the GPU where there is one) acts for all of them, and a progress bar on stderr says how
far it is. ``--workers 1 --envs 1`` is the serial evaluation: one env, one observation a forward pass.

- LIBERO: ``--episodes`` N per task, from the tasks' fixed init states 0 … N−1; per-task and mean
  success. ``--suite``, ``--tasks`` choose what to evaluate on (by default: the job's suite and tasks).
- Any other env (``reach``, ``synthetic``, a user env): N episodes, episode ``i`` from seed ``i``;
  success, mean return and length.

``--json`` adds the result, with every episode's outcome, as one JSON object on the last line.

Why here and not in :mod:`dvlad.envs`: simulators know nothing of models; this module joins the two
(a checkpoint's policy, an evaluation loop).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dvla.catalog import DEFAULT_LIBERO_SUITE
from dvla.checkpoint import checkpoint_file, spec_dict
from dvla.errors import InvalidSpec
from dvla.spec import UPPER_BOUNDS, JobSpec, SpecError, spec_from_dict
from dvlad.envs.libero import resolve_task, suite_tasks
from dvlad.lanes.device import Placement, placement_for
from dvlad.lanes.env_workers import EnvWorkerError, EnvWorkerPool
from dvlad.policies import Policy, build_policy
from dvlad.policies.checkpoint import load_weights
from dvlad.runtime.eval_episodes import Episode, Start, run_episodes
from dvlad.runtime.eval_progress import EvalProgress
from dvlad.spaces import EnvSpec


def load_policy(path: Path, spec: JobSpec, env_spec: EnvSpec, placement: Placement | None = None) -> Policy:
    """The checkpoint's policy, built for an env of ``env_spec`` as the job built it (:func:`build_policy`:
    the job's seed, so a frozen part the checkpoint does not hold, e.g. a LoRA trunk made from a config,
    comes out the same), with the checkpoint's weights; on ``placement``'s device and in its actor
    dtype (default: the CPU, fp32)."""
    placement = placement or Placement(torch.device("cpu"), torch.float32)
    policy, flat = build_policy(spec, env_spec, placement.device, placement.actor_dtype)
    load_weights(flat, path)
    return policy.eval()


def checkpoint_spec(given: str) -> tuple[Path, JobSpec]:
    """The checkpoint ``given`` names (a run directory or the file) and the spec it was trained with.

    Raises InvalidSpec (no such file, not safetensors, no D-VLA job spec in it: the SDK's checks) or
    SpecError (a spec this version no longer loads), so that the command says why in one line where
    reading the file with safetensors ended in its traceback or a KeyError."""
    file = checkpoint_file(given)
    return file, spec_from_dict(spec_dict(file))


def eval_placement(spec: JobSpec, device: str) -> Placement:
    """Where inference runs: ``auto`` is the GPU when torch sees one (in the job's precision: bf16
    unless it asked for fp32, as its actor ran), else the CPU in fp32."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return Placement(torch.device("cpu"), torch.float32)
    spec.resources.device, spec.resources.gpus, spec.placement.cpu_devices = "cuda", 0, 0
    return placement_for(spec)


@dataclass
class Plan:
    """What to evaluate: the env to build (``env_args``), the starts, and what each task is called."""

    env: str
    env_args: dict[str, Any]
    starts: list[Start]
    tasks: dict[int | None, tuple[str, str]]
    """task -> (name, instruction); the single key None for an env of one task."""
    suite: str | None = None

    @property
    def serving(self) -> list[int | None]:
        """The task env ``j`` of the pool is built for: ``tasks[j % len(tasks)]`` (LIBERO's
        ``env_index`` spread, :func:`dvlad.envs.libero.served_task`)."""
        return list(self.tasks)


def libero_plan(spec: JobSpec, suite: str | None, tasks: list[str] | None, episodes: int,
                max_episode_steps: int) -> Plan:
    """The suite's tasks (``tasks``, else the job's when it trained on that suite, else all of them),
    init states 0 … ``episodes``−1 of each."""
    job_args = dict(spec.env.args)
    job_suite = job_args.pop("suite", DEFAULT_LIBERO_SUITE)
    job_task, job_tasks = job_args.pop("task", None), job_args.pop("tasks", None)
    suite = suite or job_suite
    if tasks:
        chosen: list[int | str] = [int(t) if t.isdigit() else t for t in tasks]
    elif suite == job_suite and (job_task is not None or job_tasks is not None):
        chosen = [job_task] if job_task is not None else list(job_tasks)  # the tasks it was trained on
    else:
        chosen = list(range(len(suite_tasks(suite))))
    resolved = [resolve_task(suite, t) for t in chosen]
    indices = list(dict.fromkeys(t.index for t in resolved))  # a task named twice runs once
    env_args = {**job_args, "suite": suite, "tasks": indices,
                "max_episode_steps": max_episode_steps or None}  # None: the suite's limit
    return Plan("libero", env_args, [Start(t, i) for t in indices for i in range(episodes)],
                {t.index: (t.name, t.instruction) for t in resolved}, suite)


def env_plan(spec: JobSpec, episodes: int, max_episode_steps: int) -> Plan:
    """``episodes`` episodes of the job's env, from seeds 0 … ``episodes``−1."""
    env_args = dict(spec.env.args)
    if max_episode_steps or spec.env.max_episode_steps:
        env_args["max_episode_steps"] = max_episode_steps or spec.env.max_episode_steps
    return Plan(spec.env.name, env_args, [Start(None, i) for i in range(episodes)], {None: (spec.env.name, "")})


@dataclass
class Report:
    """An evaluation's outcome: every episode, and how it ran."""

    plan: Plan
    episodes: list[Episode]
    workers: int
    envs: int
    device: str
    build_s: float
    """Starting the env workers (building the envs) and loading the policy."""
    run_s: float
    """Running the episodes."""
    per_task: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.per_task = []
        for task, (name, instruction) in self.plan.tasks.items():
            mine = [e for e in self.episodes if e.start.task == task]
            successes = sum(e.success for e in mine)
            self.per_task.append({"task": task, "name": name, "instruction": instruction, "episodes": len(mine),
                                  "successes": successes, "success_rate": successes / len(mine),
                                  "mean_length": float(np.mean([e.length for e in mine]))})

    @property
    def mean_success(self) -> float:
        """The mean of the per-task success rates (LIBERO's reported number; with one task, the rate)."""
        return float(np.mean([t["success_rate"] for t in self.per_task]))

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.plan.env, "suite": self.plan.suite, "episodes": len(self.episodes),
                "successes": sum(e.success for e in self.episodes), "mean_success": self.mean_success,
                "mean_return": float(np.mean([e.ret for e in self.episodes])),
                "mean_length": float(np.mean([e.length for e in self.episodes])),
                "tasks": self.per_task,
                "per_episode": [{"task": e.start.task, "start": e.start.index, "success": e.success,
                                 "return": e.ret, "length": e.length, "final_proprio": list(e.final_proprio)}
                                for e in self.episodes],
                "workers": self.workers, "envs": self.envs, "device": self.device,
                "build_s": round(self.build_s, 2), "run_s": round(self.run_s, 2),
                "episodes_per_s": round(len(self.episodes) / self.run_s, 4) if self.run_s > 0 else None,
                "env_steps_per_s": round(sum(e.length for e in self.episodes) / self.run_s, 2) if self.run_s > 0
                else None}

    def format(self) -> str:
        n, per = len(self.episodes), len(self.episodes) // len(self.per_task)
        lines = []
        if self.plan.suite is not None:
            lines.append(f"{'task':>4}  {'success':>7}  {'mean len':>8}  instruction")
            lines += [f"{t['task']:>4}  {t['successes']:>3}/{t['episodes']:<3}  {t['mean_length']:>8.1f}  "
                      f"{t['instruction']}" for t in self.per_task]
            starts = f"init states 0..{per - 1} of each of {len(self.per_task)} task(s)"
        else:
            starts = f"seeds 0..{n - 1}"
        d = self.as_dict()
        lines.append(f"{self.plan.suite or self.plan.env}: success {self.mean_success:.3f} ({d['successes']}/{n}), "
                     f"mean return {d['mean_return']:.3f}, mean length {d['mean_length']:.1f} over {n} episodes "
                     f"from {starts}, greedy")
        lines.append(f"{self.envs} env(s) in {self.workers} worker(s), inference on {self.device}: "
                     f"{self.build_s:.1f} s to build, {self.run_s:.1f} s to run ({d['env_steps_per_s']} env steps/s)")
        return "\n".join(lines)


def evaluate(path: Path, spec: JobSpec, plan: Plan, workers: int, envs: int, placement: Placement,
             progress: bool = True) -> Report:
    """Every start of ``plan`` once, greedy, over ``envs`` envs in ``workers`` env worker processes."""
    if progress:
        print(f"building {envs} {plan.env} env(s) in {workers} worker(s)", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    pool = EnvWorkerPool(plan.env, plan.env_args, num_envs=envs, groups=1, workers=workers,
                         action_chunk=spec.policy.action_chunk, auto_reset=False, seed=spec.job.seed,
                         step_timeout_s=spec.env.step_timeout_s, nice=spec.env.nice)
    try:
        per_task = max(s.index for s in plan.starts) + 1
        if plan.suite is not None and per_task > pool.spec.num_init_states:
            raise ValueError(f"--episodes {per_task}: a task of {plan.suite} has {pool.spec.num_init_states} "
                             "init states")
        policy = load_policy(path, spec, pool.spec, placement)
        build_s = time.monotonic() - t0
        bar = EvalProgress(len(plan.starts), enabled=progress)
        t1 = time.monotonic()
        serving = [plan.serving[j % len(plan.serving)] for j in range(envs)]
        try:
            episodes = run_episodes(pool, policy, placement, plan.starts, serving, lambda e: bar.episode(e.success))
        finally:
            bar.close()  # a live bar left running would hold the terminal
        run_s = time.monotonic() - t1
    finally:
        pool.close()
    return Report(plan, episodes, workers, envs, str(placement.device), build_s, run_s)


def pool_size(total: int, workers: int, envs: int) -> tuple[int, int]:
    """(workers, envs): no more workers than episodes, no more envs than episodes (an env with no
    start to run is built for nothing), and envs a multiple of the workers (each steps an equal slice),
    rounded down."""
    workers = max(1, min(workers, total))
    envs = min(envs or 16, total)
    return workers, max(envs // workers, 1) * workers


MAX_EPISODES = 1_000_000
EXIT_INTERRUPTED = 130
"""Ctrl-C: no result (the shell's status for SIGINT)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dvlad.runtime.evaluate",
                                     description=__doc__.partition("\nWhy here")[0].replace("``", "`"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="The progress bar goes to stderr, the result to stdout. Exit status: 0 "
                                            "done, 2 it cannot run (why on stderr), 130 interrupted (Ctrl-C).")
    parser.add_argument("checkpoint", help="a run directory or its checkpoint.safetensors")
    parser.add_argument("--suite", help="LIBERO suite (default: the job's)")
    parser.add_argument("--tasks", nargs="+", help="LIBERO task indices or names (default: the job's tasks, else "
                                                   "the whole suite)")
    parser.add_argument("--episodes", type=int, default=50, help="LIBERO: episodes per task, from init states "
                                                                 "0..N-1; other envs: episodes, from seeds 0..N-1")
    parser.add_argument("--max-episode-steps", type=int, default=0, help="0: the job's limit (LIBERO: the suite's)")
    parser.add_argument("--workers", type=int, default=0, help="env worker processes (default: the job's "
                                                              "env.workers, at most one per core)")
    parser.add_argument("--envs", type=int, default=0, help="envs stepped at once, at most one per episode, rounded "
                                                           "down to a multiple of the workers (default: 16)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the batched inference runs (auto: cuda when torch sees a GPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines on stderr")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    args = parser.parse_args(argv)
    if not 1 <= args.episodes <= MAX_EPISODES:
        parser.error(f"--episodes must be from 1 to {MAX_EPISODES:,} (each episode's outcome is kept for the "
                     f"report), got {args.episodes:,}")
    most_steps, why = UPPER_BOUNDS["env.max_episode_steps"]
    if not 0 <= args.max_episode_steps <= most_steps:
        parser.error(f"--max-episode-steps must be from 0 to {most_steps:,} ({why}), got {args.max_episode_steps:,}")
    if args.workers < 0 or args.envs < 0:
        parser.error("--workers and --envs must be at least 1 (0: the default)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no GPU")
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C: evaluate() has closed the env workers and their shared memory
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    """The command, its arguments checked: the result on stdout, exit 0; or why not on stderr, exit 2."""
    try:
        path, spec = checkpoint_spec(args.checkpoint)
    except InvalidSpec as err:
        print(err.reason, file=sys.stderr)
        return 2
    except SpecError as err:
        print(f"{args.checkpoint}: its job spec does not load: {err.issues[0]}", file=sys.stderr)
        return 2
    try:
        if spec.env.name == "libero":
            plan = libero_plan(spec, args.suite, args.tasks, args.episodes, args.max_episode_steps)
        elif args.suite or args.tasks:
            print(f"{path} was trained on env {spec.env.name!r}: --suite and --tasks are LIBERO's", file=sys.stderr)
            return 2
        else:
            plan = env_plan(spec, args.episodes, args.max_episode_steps)
        workers, envs = pool_size(len(plan.starts), args.workers or min(spec.env.workers, os.cpu_count() or 1),
                                  args.envs)
        report = evaluate(path, spec, plan, workers, envs, eval_placement(spec, args.device), not args.no_progress)
    except (ValueError, EnvWorkerError) as err:
        print(f"{path}: {err}", file=sys.stderr)
        return 2
    print(report.format())
    if args.json:
        print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
