"""Evaluate a trained policy: ``python -m dvlad.runtime.evaluate RUN_DIR``.

The policy and the env are rebuilt from the job spec stored in the checkpoint, so the cameras, image
size and policy arguments are the ones it was trained with; every action is the policy's most likely
one (greedy), and every episode starts from a fixed start, the same for every policy, so numbers
compare. ``--json`` adds the result as one JSON object on the last line.

- LIBERO: N episodes per task from the tasks' fixed init states 0 … N−1, per-task and mean success;
  ``--suite``, ``--tasks`` choose what to evaluate on (by default: the job's suite and tasks).
- Any other env (``reach``, ``synthetic``, a user env): N episodes, episode ``i`` from seed ``i``,
  stepped in parallel over env worker processes (the job's own :class:`EnvWorkerPool`, ``--workers``
  of them stepping ``--envs`` envs at once, in waves); mean success, return and length.

``--episodes`` (default 50) and ``--max-episode-steps`` (default: the job's limit) apply to both.

Why here and not in :mod:`dvlad.envs`: simulators know nothing of models; this module joins the two
(a checkpoint's policy, an evaluation loop).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dvla.catalog import DEFAULT_LIBERO_SUITE
from dvla.checkpoint import checkpoint_file, spec_dict
from dvla.errors import InvalidSpec
from dvla.spec import JobSpec, SpecError, spec_from_dict
from dvlad.envs.base import Observation
from dvlad.envs.libero import Act, EvalResult, LiberoEnv, evaluate
from dvlad.lanes.env_workers import EnvWorkerPool, decode_instruction
from dvlad.policies import ObsBatch, Policy, build_policy
from dvlad.policies.checkpoint import load_weights
from dvlad.spaces import EnvSpec


def load_policy(path: Path, spec: JobSpec, env_spec: EnvSpec) -> Policy:
    """The checkpoint's policy, built for an env of ``env_spec`` as the job built it (:func:`build_policy`:
    the job's seed, so a frozen part the checkpoint does not hold, e.g. a LoRA trunk made from a config,
    comes out the same), with the checkpoint's weights."""
    policy, flat = build_policy(spec, env_spec)
    load_weights(flat, path)
    return policy.eval()


def checkpoint_spec(given: str) -> tuple[Path, JobSpec]:
    """The checkpoint ``given`` names (a run directory or the file) and the spec it was trained with.

    Raises InvalidSpec (no such file, not safetensors, no D-VLA job spec in it: the SDK's checks) or
    SpecError (a spec this version no longer loads), so that the command says why in one line where
    reading the file with safetensors ended in its traceback or a KeyError."""
    file = checkpoint_file(given)
    return file, spec_from_dict(spec_dict(file))


def greedy_act(policy: Policy) -> Act:
    """The policy's most likely action chunk for one observation."""

    def act(obs: Observation) -> np.ndarray:
        batch = ObsBatch(
            images={k: torch.from_numpy(v).unsqueeze(0) for k, v in obs.images.items()},
            proprio=torch.from_numpy(obs.proprio).unsqueeze(0),
            instruction=policy.tokenize([obs.instruction]),
        )
        with torch.no_grad():
            return policy.act(batch, deterministic=True).actions[0].numpy()

    return act


def format_result(result: EvalResult) -> str:
    lines = [f"{'task':>4}  {'success':>7}  instruction"]
    lines += [f"{t.task:>4}  {t.successes:>3}/{t.episodes:<3}  {t.instruction}" for t in result.tasks]
    lines.append(f"{result.suite}: mean success {result.mean_success:.3f} over {len(result.tasks)} task(s)")
    return "\n".join(lines)


@dataclass
class Episode:
    seed: int
    success: bool
    ret: float
    length: int


@dataclass
class EnvResult:
    """The episodes of a non-LIBERO evaluation, in seed order."""

    env: str
    episodes: list[Episode]

    @property
    def mean_success(self) -> float:
        return float(np.mean([e.success for e in self.episodes]))

    @property
    def mean_return(self) -> float:
        return float(np.mean([e.ret for e in self.episodes]))

    @property
    def mean_length(self) -> float:
        return float(np.mean([e.length for e in self.episodes]))

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "episodes": len(self.episodes), "successes": sum(e.success for e in self.episodes),
                "mean_success": self.mean_success, "mean_return": self.mean_return, "mean_length": self.mean_length,
                "per_episode": [{"seed": e.seed, "success": e.success, "return": e.ret, "length": e.length}
                                for e in self.episodes]}


def evaluate_in_workers(path: Path, spec: JobSpec, env_args: dict[str, Any], episodes: int, workers: int,
                        envs: int) -> EnvResult:
    """``episodes`` greedy episodes of the checkpoint's policy, episode ``i`` from seed ``i``, on ``envs``
    envs stepped by ``workers`` worker processes at once: a wave of ``envs`` episodes starts together,
    an env whose episode ended holds still until the wave's last ends, and one batched forward pass
    acts for the whole wave."""
    pool = EnvWorkerPool(spec.env.name, env_args, num_envs=envs, groups=1, workers=workers,
                         action_chunk=spec.policy.action_chunk, auto_reset=False, seed=spec.job.seed,
                         step_timeout_s=spec.env.step_timeout_s)
    done: list[Episode] = []
    try:
        policy = load_policy(path, spec, pool.spec)
        for first in range(0, episodes, envs):
            pool.reset(0, np.arange(first, first + envs))
            pool.wait(0)
            alive = np.arange(envs) < episodes - first  # the last wave may be partial
            while alive.any():
                obs = pool.read(0)
                batch = ObsBatch(images={cam: torch.from_numpy(v) for cam, v in obs.images.items()},
                                 proprio=torch.from_numpy(obs.proprio),
                                 instruction=policy.tokenize([decode_instruction(row) for row in obs.instruction]))
                with torch.no_grad():
                    actions = policy.act(batch, deterministic=True).actions.float().numpy()
                pool.step(0, actions, alive)
                result = pool.wait(0)
                if result.dropped_envs:
                    raise RuntimeError(f"an env worker stopped answering (env.step_timeout_s = "
                                       f"{spec.env.step_timeout_s}): its episodes are lost")
                out = result.outcome
                for j in np.flatnonzero(result.done & alive):
                    done.append(Episode(first + int(j), bool(out["success"][j]), float(out["episode_return"][j]),
                                        int(out["episode_length"][j])))
                alive &= ~result.done
    finally:
        pool.close()
    return EnvResult(spec.env.name, sorted(done, key=lambda e: e.seed))


def format_env_result(result: EnvResult) -> str:
    n = len(result.episodes)
    return (f"{result.env}: success {result.mean_success:.3f} ({sum(e.success for e in result.episodes)}/{n}), "
            f"mean return {result.mean_return:.3f}, mean length {result.mean_length:.1f} over {n} episodes "
            f"from seeds 0..{n - 1}, greedy")


def _evaluate_libero(args: argparse.Namespace, path: Path, spec: JobSpec) -> EvalResult:
    job_args = dict(spec.env.args)
    job_suite = job_args.pop("suite", DEFAULT_LIBERO_SUITE)
    job_task, job_tasks = job_args.pop("task", None), job_args.pop("tasks", None)
    suite = args.suite or job_suite
    if args.tasks:
        tasks = [int(t) if t.isdigit() else t for t in args.tasks]
    elif suite == job_suite and (job_task is not None or job_tasks is not None):
        tasks = [job_task] if job_task is not None else list(job_tasks)  # the tasks it was trained on
    else:
        tasks = None
    env_args = job_args
    env_args["max_episode_steps"] = args.max_episode_steps or None
    env = LiberoEnv(suite, task=tasks[0] if tasks else 0, **env_args)
    try:
        policy = load_policy(path, spec, env.spec)
        return evaluate(greedy_act(policy), env, tasks, args.episodes)
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dvlad.runtime.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a run directory or its checkpoint.safetensors")
    parser.add_argument("--suite", help="LIBERO suite (default: the job's)")
    parser.add_argument("--tasks", nargs="+", help="LIBERO task indices or names (default: the job's tasks, else "
                                                   "the whole suite)")
    parser.add_argument("--episodes", type=int, default=50, help="LIBERO: episodes per task, from init states "
                                                                 "0..N-1; other envs: episodes, from seeds 0..N-1")
    parser.add_argument("--max-episode-steps", type=int, default=0, help="0: the job's limit (LIBERO: the suite's)")
    parser.add_argument("--workers", type=int, default=0, help="other envs: env worker processes (default: the "
                                                              "job's env.workers, at most one per core)")
    parser.add_argument("--envs", type=int, default=0, help="other envs: envs stepped at once (default: up to 16)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")

    try:
        path, spec = checkpoint_spec(args.checkpoint)
    except InvalidSpec as err:
        print(err.reason, file=sys.stderr)
        return 2
    except SpecError as err:
        print(f"{args.checkpoint}: its job spec does not load: {err.issues[0]}", file=sys.stderr)
        return 2
    if spec.env.name == "libero":
        result: EvalResult | EnvResult = _evaluate_libero(args, path, spec)
        print(format_result(result))
    else:
        if args.suite or args.tasks:
            print(f"{path} was trained on env {spec.env.name!r}: --suite and --tasks are LIBERO's", file=sys.stderr)
            return 2
        workers = args.workers or max(1, min(spec.env.workers, os.cpu_count() or 1))
        envs = args.envs or min(args.episodes, 16)
        envs = -(-max(envs, workers) // workers) * workers  # a multiple of the workers: each steps a slice
        env_args = dict(spec.env.args)
        if args.max_episode_steps or spec.env.max_episode_steps:
            env_args["max_episode_steps"] = args.max_episode_steps or spec.env.max_episode_steps
        result = evaluate_in_workers(path, spec, env_args, args.episodes, workers, envs)
        print(format_env_result(result))
    if args.json:
        print(json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
