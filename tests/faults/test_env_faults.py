"""Envs that crash, exit, hang or return NaN on every step fail the job with a reason that names the
env and what happened, after a bounded number of replacements; non-finite rewards stop it before the
last good checkpoint is overwritten. Real env workers running dvlad.envs.faulty."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dvla.checkpoint import CHECKPOINT_NAME
from dvlad.envs import faulty
from dvlad.lanes.env_workers import EnvWorkerError, EnvWorkerPool, ReplacementBudget
from dvlad.lanes.pipeline import JobFailed
from dvlad.policies.checkpoint import load_checkpoint
from dvlad.runtime.job import failure_reason, run_job
from dvlad.spaces import ACTION_DIM

FAULTY = "dvlad.envs.faulty:make"
ARGS = {"step_ms": 0.5, "image_size": 8, "cameras": ["a"], "max_episode_steps": 5}


def _pool(fault: str, replacements: int = 2, step_timeout_s: float = 10.0) -> EnvWorkerPool:
    return EnvWorkerPool(FAULTY, {**ARGS, "fault": fault, "after_steps": 1}, num_envs=2, groups=1, workers=1,
                         action_chunk=1, step_timeout_s=step_timeout_s,
                         replacement_budget=ReplacementBudget(replacements, 600.0))


def _step_until_it_gives_up(pool: EnvWorkerPool) -> str:
    still = np.zeros((pool.envs_per_group, 1, ACTION_DIM), np.float32)
    for _ in range(10):
        pool.step(0, still)
        try:
            pool.wait(0)
        except EnvWorkerError as err:
            return str(err)
    raise AssertionError(f"still replacing workers after {pool.replaced_workers}")


@pytest.mark.parametrize(("fault", "how"), [("segfault", "killed by signal SIGSEGV"), ("exit", "exited with status 3")])
def test_an_env_that_dies_on_every_step_fails_after_its_replacement_budget(fault, how):
    pool = _pool(fault)
    try:
        reason = _step_until_it_gives_up(pool)
    finally:
        pool.close()
    assert pool.replaced_workers == 2  # the budget, then the failure
    assert reason.startswith(f"env '{FAULTY}': worker 0 {how} ("), reason
    assert "; 2 workers already replaced in the last 10 min (env.max_worker_replacements = 2" in reason
    assert "\n" not in reason


def test_an_env_that_hangs_on_every_step_fails_naming_the_timeout():
    pool = _pool("hang", replacements=1, step_timeout_s=1.0)
    try:
        reason = _step_until_it_gives_up(pool)
    finally:
        pool.close()
    assert reason.startswith(f"env '{FAULTY}': worker 0 did not answer a step within 1 s (env.step_timeout_s); "
                             "1 worker already replaced"), reason


@pytest.mark.parametrize(("fault", "how"), [
    ("build_exit", "exited with status 3 (no output)"),
    ("build_segfault", "killed by signal SIGSEGV (its last output: Fatal Python error: Segmentation fault, in File "
                       f'"{faulty.__file__}", line ')])
def test_a_worker_that_dies_while_building_says_how_and_what_it_printed(fault, how):
    with pytest.raises(EnvWorkerError) as caught:
        _pool(fault)
    reason = failure_reason(caught.value)  # was "EOFError"
    assert reason.startswith(f"env '{FAULTY}': worker 0 {how}"), reason
    assert reason.endswith("while building its envs") and "\n" not in reason


@pytest.mark.slow
def test_an_env_that_segfaults_fails_the_job_instead_of_succeeding_with_no_episodes(small_spec, tmp_path):
    spec = small_spec("async", env__name=FAULTY, env__max_worker_replacements=1, train__total_env_steps=100_000)
    spec.env.args.update(fault="segfault", after_steps=3)
    t0 = time.monotonic()
    with pytest.raises(EnvWorkerError) as caught:
        run_job(spec, tmp_path, quiet=True)
    assert time.monotonic() - t0 < 120
    assert "killed by signal SIGSEGV (its last output: Fatal Python error: Segmentation fault" in str(caught.value)
    assert "; 1 worker already replaced" in failure_reason(caught.value)


@pytest.mark.slow
def test_nan_rewards_stop_the_job_and_the_last_good_checkpoint_survives(small_spec, tmp_path):
    # 8 envs, 8-step segments, 2 groups: an update every 8 steps of each env; NaN from its 40th step
    spec = small_spec("async", env__name=FAULTY, train__total_env_steps=100_000, train__checkpoint_every=1)
    spec.env.args.update(fault="nan", after_steps=40)
    with pytest.raises(JobFailed) as caught:
        run_job(spec, tmp_path, quiet=True)
    reason = failure_reason(caught.value)
    assert reason.startswith("learner failed: NonFiniteError: the env 'dvlad.envs.faulty:make' returned "), reason
    tensors, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)  # written before the NaN came
    assert int(meta["version"]) >= 1
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
