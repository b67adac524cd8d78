"""Env worker processes and their shared-memory slots, on the real synthetic and reach envs."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from dvlad.lanes.actor import Actor, ActorConfig, SlotTornError
from dvlad.lanes.env_workers import CMD_HOLD, CMD_RESET, CMD_STEP, EnvWorkerPool, decode_instruction
from dvlad.lanes.timeline import LaneTimeline
from dvlad.policies import make_policy
from dvlad.policies.base import flatten_parameters


@pytest.fixture
def pool():
    p = EnvWorkerPool("synthetic", {"step_ms": 0.5, "image_size": 8, "cameras": ["a", "b"], "max_episode_steps": 5},
                      num_envs=8, groups=2, workers=2, action_chunk=2, seed=3, step_timeout_s=10.0)
    yield p
    p.close()


def _check_slots_consistent(pool: EnvWorkerPool, envs: slice) -> None:
    """The synthetic env paints every pixel with (step + 31·episode) % 251 and puts step and
    episode in proprio[0:2]: a slot read half-written shows a mismatch."""
    s = pool.slots
    step, episode = s["proprio"][envs, 0], s["proprio"][envs, 1]
    expected = ((step + 31 * episode) % 251).astype(np.uint8)
    for cam in ("a", "b"):
        img = s[f"image/{cam}"][envs]
        assert (img == expected[:, None, None, None]).all()
    assert (s["seq_begin"][envs] == s["seq_end"][envs]).all()


def test_groups_step_in_parallel_and_slots_are_never_half_written(pool):
    s = pool.slots
    s["action"][:] = 0.0
    s["command"][:] = CMD_STEP
    for _ in range(30):
        pool.send(0)
        pool.send(1)  # both groups in flight: every worker holds a slice of each
        r0, r1 = pool.wait(0), pool.wait(1)
        assert r0.env_steps > 0 and r1.env_steps > 0
        assert len(r0.intervals) == 2  # both workers stepped group 0
        _check_slots_consistent(pool, slice(0, 8))
    assert s["seq_end"].min() >= 30


def test_reader_detects_a_slot_caught_mid_write(pool):
    policy = make_policy("tiny-vla", pool.spec, action_chunk=2, d_model=16, layers=1, heads=2, patch_grid=2)
    actor = Actor(pool, policy, flatten_parameters(policy), None, None,  # type: ignore[arg-type]
                  ActorConfig(4, 1, True), LaneTimeline())
    actor._read_obs(pool.group_slice(0))  # consistent: fine
    pool.slots["seq_begin"][1] += 1  # what a worker does before writing slot 1
    with pytest.raises(SlotTornError):
        actor._read_obs(pool.group_slice(0))


def test_action_chunks_run_in_order_and_stop_at_episode_end(pool):
    s = pool.slots
    s["command"][:] = CMD_STEP
    for _ in range(3):  # 3 chunks of 2 actions: an episode of 5 steps ends inside the third
        pool.send(0)
        pool.wait(0)
    assert (s["env_steps"][0:4] == 1).all()  # the third chunk stopped after one step
    assert s["truncated"][0:4].all()
    assert (s["episode_length"][0:4] == 5).all()


def test_reset_to_a_seed_and_hold(pool):
    s = pool.slots
    s["command"][0:4] = CMD_RESET
    s["seed"][0:4] = [7, 7, 9, 9]
    pool.send(0)
    pool.wait(0)
    instr = [decode_instruction(s["instruction"][i]) for i in range(4)]
    assert instr[0] == instr[1] and instr[2] == instr[3]  # equal seeds, equal starts
    before = s["image/a"][0:4].copy()
    s["command"][0:4] = CMD_HOLD
    pool.send(0)
    r = pool.wait(0)
    assert r.env_steps == 0 and (s["image/a"][0:4] == before).all()


def test_killed_worker_is_replaced_and_its_episodes_dropped(pool):
    s = pool.slots
    s["command"][:] = CMD_STEP
    pool.send(0)
    pool.wait(0)
    victim = pool.workers[1].process.pid
    os.kill(victim, signal.SIGKILL)
    pool.send(0)
    result = pool.wait(0)
    assert sorted(result.dropped_envs) == [2, 3, 6, 7]  # its slice of both groups
    assert pool.replaced_workers == 1 and victim not in pool.pids()
    _check_slots_consistent(pool, slice(0, 8))  # fresh episodes in its slots
    for _ in range(3):  # and the pool goes on
        pool.send(0)
        pool.send(1)
        assert pool.wait(0).env_steps > 0 and pool.wait(1).env_steps > 0


def test_hung_worker_is_replaced_after_the_step_timeout():
    pool = EnvWorkerPool("synthetic", {"step_ms": 0.5, "image_size": 8, "cameras": ["a"]}, num_envs=2, groups=1,
                         workers=2, action_chunk=1, step_timeout_s=1.5)
    try:
        os.kill(pool.workers[0].process.pid, signal.SIGSTOP)  # alive but never answers
        pool.slots["command"][:] = CMD_STEP
        pool.send(0)
        result = pool.wait(0)
        assert result.dropped_envs == [0] and pool.replaced_workers == 1
    finally:
        pool.close()


def test_reach_env_workers_render_real_images():
    pool = EnvWorkerPool("reach", {}, num_envs=2, groups=1, workers=1, action_chunk=1, seed=0)
    try:
        img = pool.slots["image/image"]
        assert img.shape == (2, 64, 64, 3) and img.std() > 10  # a scene, not a blank buffer
        assert decode_instruction(pool.slots["instruction"][0]).startswith("touch the ")
        pool.slots["command"][:] = CMD_STEP
        pool.slots["action"][:] = torch.zeros(2, 1, 7).numpy()
        pool.send(0)
        assert pool.wait(0).env_steps == 2
    finally:
        pool.close()


def test_aux_labels_reach_the_slots_beside_their_images():
    """reach's labels (the named cube's image position) are written with each observation:
    the pixel a slot's label points at shows the colour its instruction names (unless the
    gripper, moving at random, happens to cover the cube)."""
    from dvlad.envs.reach import COLOURS

    pool = EnvWorkerPool("reach", {}, num_envs=4, groups=1, workers=2, action_chunk=1, seed=5)
    try:
        rng, matches = np.random.default_rng(0), []
        for _ in range(45):  # past the 40-step limit: auto-resets draw new layouts
            pool.slots["command"][:] = CMD_STEP
            pool.slots["action"][:] = rng.uniform(-1, 1, (4, 1, 7))
            pool.send(0)
            pool.wait(0)
            for i in range(4):
                x, y = pool.slots["aux"][i]
                colour = decode_instruction(pool.slots["instruction"][i]).split()[2]
                pixel = pool.slots["image/image"][i][int((y + 1) * 32), int((x + 1) * 32)] / 255.0
                matches.append(np.linalg.norm(pixel - np.array(COLOURS[colour])) < 0.3)
        assert np.mean(matches) > 0.9
    finally:
        pool.close()


def test_slots_get_their_env_index_in_blocks():
    """A factory that declares ``env_index`` learns its slot's block (GRPO: one block, one task)."""
    pool = EnvWorkerPool("indexed_env:make", {"step_ms": 0.1, "image_size": 8, "cameras": ["a"]}, num_envs=4,
                         groups=1, workers=2, action_chunk=1, envs_per_index=2)
    try:
        assert [decode_instruction(pool.slots["instruction"][i]) for i in range(4)] == \
            ["env index 0", "env index 0", "env index 1", "env index 1"]
    finally:
        pool.close()
