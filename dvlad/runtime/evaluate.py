"""Evaluate a trained policy on LIBERO: ``python -m dvlad.runtime.evaluate RUN_DIR``.

Runs N episodes per task from the tasks' fixed init states 0 … N−1 (the same starts for every
policy, so numbers compare) with the policy's most likely actions, and prints per-task and mean
success (``--json``: one JSON object as the last line). The policy and the env are rebuilt from
the job spec stored in the checkpoint, so the cameras, image size and policy arguments are the
ones it was trained with; ``--suite``, ``--tasks``, ``--episodes`` and ``--max-episode-steps``
choose what to evaluate on (by default: the job's suite and tasks, 50 episodes, the suite's limit).

Why here and not in :mod:`dvlad.envs.libero`: simulators know nothing of models; this module
joins the two (a checkpoint's policy, LIBERO's evaluation loop).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dvla.catalog import DEFAULT_LIBERO_SUITE
from dvla.checkpoint import checkpoint_file, spec_dict
from dvla.errors import InvalidSpec
from dvla.spec import JobSpec, SpecError, spec_from_dict
from dvlad.envs.base import Observation
from dvlad.envs.libero import Act, EvalResult, LiberoEnv, evaluate
from dvlad.policies import ObsBatch, Policy, build_policy
from dvlad.policies.checkpoint import load_weights


def load_policy(path: Path, spec: JobSpec, env: LiberoEnv) -> Policy:
    """The checkpoint's policy, built for ``env`` as the job built it (:func:`build_policy`: the
    job's seed, so a frozen part the checkpoint does not hold, e.g. a LoRA trunk made from a config,
    comes out the same), with the checkpoint's weights."""
    policy, flat = build_policy(spec, env.spec)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dvlad.runtime.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a run directory or its checkpoint.safetensors")
    parser.add_argument("--suite", help="LIBERO suite (default: the job's)")
    parser.add_argument("--tasks", nargs="+", help="task indices or names (default: the job's tasks, else the "
                                                   "whole suite)")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task, from init states 0..N-1")
    parser.add_argument("--max-episode-steps", type=int, default=0, help="0: the suite's limit")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    args = parser.parse_args(argv)

    try:
        path, spec = checkpoint_spec(args.checkpoint)
    except InvalidSpec as err:
        print(err.reason, file=sys.stderr)
        return 2
    except SpecError as err:
        print(f"{args.checkpoint}: its job spec does not load: {err.issues[0]}", file=sys.stderr)
        return 2
    if spec.env.name != "libero":
        print(f"{path} was trained on env {spec.env.name!r}; this evaluates LIBERO policies", file=sys.stderr)
        return 2
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
        policy = load_policy(path, spec, env)
        result = evaluate(greedy_act(policy), env, tasks, args.episodes)
    finally:
        env.close()
    print(format_result(result))
    if args.json:
        print(json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
