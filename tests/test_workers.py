"""Env worker processes and their shared-memory slots, on the real synthetic and reach envs."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from dvlad.lanes.env_workers import EnvWorkerPool, SlotTornError, decode_instruction
from dvlad.spaces import ACTION_DIM


@pytest.fixture
def pool():
    p = EnvWorkerPool("synthetic", {"step_ms": 0.5, "image_size": 8, "cameras": ["a", "b"], "max_episode_steps": 5},
                      num_envs=8, groups=2, workers=2, action_chunk=2, seed=3, step_timeout_s=10.0)
    yield p
    p.close()


def still(pool: EnvWorkerPool) -> np.ndarray:
    """Zero action chunks for one env group."""
    return np.zeros((pool.envs_per_group, pool.action_chunk, ACTION_DIM), np.float32)


def _check_consistent(pool: EnvWorkerPool, group: int) -> None:
    """The synthetic env paints every pixel with (step + 31·episode) % 251 and puts step and
    episode in proprio[0:2]: a slot read half-written shows a mismatch."""
    obs = pool.read(group)
    step, episode = obs.proprio[:, 0], obs.proprio[:, 1]
    expected = ((step + 31 * episode) % 251).astype(np.uint8)
    for cam in ("a", "b"):
        assert (obs.images[cam] == expected[:, None, None, None]).all()


def test_groups_step_in_parallel_and_slots_are_never_half_written(pool):
    for _ in range(30):
        pool.step(0, still(pool))
        pool.step(1, still(pool))  # both groups in flight: every worker holds a slice of each
        r0, r1 = pool.wait(0), pool.wait(1)
        assert r0.env_steps > 0 and r1.env_steps > 0
        assert len(r0.intervals) == 2  # both workers stepped group 0
        _check_consistent(pool, 0)
        _check_consistent(pool, 1)
    assert pool.slots["seq_end"].min() >= 30


def test_reader_detects_a_slot_caught_mid_write(pool):
    pool.read(0)  # consistent: fine
    pool.slots["seq_begin"][1] += 1  # what a worker does before writing slot 1
    with pytest.raises(SlotTornError):
        pool.read(0)


def test_action_chunks_run_in_order_and_stop_at_episode_end(pool):
    for _ in range(3):  # 3 chunks of 2 actions: an episode of 5 steps ends inside the third
        pool.step(0, still(pool))
        result = pool.wait(0)
    assert (result.outcome["env_steps"] == 1).all()  # the third chunk stopped after one step
    assert result.outcome["truncated"].all() and result.done.all()
    assert (result.outcome["episode_length"] == 5).all()


def test_reset_to_a_seed_and_hold(pool):
    pool.reset(0, np.array([7, 7, 9, 9]))
    pool.wait(0)
    obs = pool.read(0)
    instr = [decode_instruction(row) for row in obs.instruction]
    assert instr[0] == instr[1] and instr[2] == instr[3]  # equal seeds, equal starts
    pool.step(0, still(pool), active=np.zeros(4, bool))
    r = pool.wait(0)
    assert r.env_steps == 0 and (pool.read(0).images["a"] == obs.images["a"]).all()


def test_killed_worker_is_replaced_and_its_episodes_dropped(pool):
    pool.step(0, still(pool))
    pool.wait(0)
    victim = pool.workers[1].process.pid
    os.kill(victim, signal.SIGKILL)
    pool.step(0, still(pool))
    result = pool.wait(0)
    assert sorted(result.dropped_envs) == [2, 3, 6, 7]  # its slice of both groups
    assert pool.replaced_workers == 1 and victim not in pool.pids()
    _check_consistent(pool, 0)  # fresh episodes in its slots
    _check_consistent(pool, 1)
    for _ in range(3):  # and the pool goes on
        pool.step(0, still(pool))
        pool.step(1, still(pool))
        assert pool.wait(0).env_steps > 0 and pool.wait(1).env_steps > 0


def test_hung_worker_is_replaced_after_the_step_timeout():
    pool = EnvWorkerPool("synthetic", {"step_ms": 0.5, "image_size": 8, "cameras": ["a"]}, num_envs=2, groups=1,
                         workers=2, action_chunk=1, step_timeout_s=1.5)
    try:
        os.kill(pool.workers[0].process.pid, signal.SIGSTOP)  # alive but never answers
        pool.step(0, still(pool))
        result = pool.wait(0)
        assert result.dropped_envs == [0] and pool.replaced_workers == 1
    finally:
        pool.close()


@pytest.mark.parametrize("nice", [0, 7])
def test_workers_yield_the_cores_by_nice_and_every_thread_keeps_it(nice):
    """``env.nice``: the workers become batch work at a lower priority, yielding the cores to the
    actor and the learner (0: as they were). Linux keeps both per thread, so each thread of a worker
    (a simulator's own included) must have them; a thread may lower itself further (Mesa's disk
    cache thread runs at 19)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    pool = EnvWorkerPool("reach", {}, num_envs=2, groups=1, workers=2, action_chunk=1, nice=nice)
    try:
        for pid in pool.pids():
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            assert len(threads) > 1  # the simulator's renderer starts threads of its own
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(base + nice, 19)
            assert min(os.getpriority(os.PRIO_PROCESS, t) for t in threads) == min(base + nice, 19)
            if nice:
                assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_BATCH}
            else:
                assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the pool's own process is untouched
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        pool.close()


def test_reach_env_workers_render_real_images():
    pool = EnvWorkerPool("reach", {}, num_envs=2, groups=1, workers=1, action_chunk=1, seed=0)
    try:
        obs = pool.read(0)
        assert obs.images["image"].shape == (2, 64, 64, 3) and obs.images["image"].std() > 10  # a scene
        assert decode_instruction(obs.instruction[0]).startswith("touch the ")
        pool.step(0, still(pool))
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
            pool.step(0, rng.uniform(-1, 1, (4, 1, ACTION_DIM)))
            pool.wait(0)
            obs = pool.read(0)
            for i in range(4):
                x, y = obs.aux[i]
                colour = decode_instruction(obs.instruction[i]).split()[2]
                pixel = obs.images["image"][i][int((y + 1) * 32), int((x + 1) * 32)] / 255.0
                matches.append(np.linalg.norm(pixel - np.array(COLOURS[colour])) < 0.3)
        assert np.mean(matches) > 0.9
    finally:
        pool.close()


def test_slots_get_their_env_index_in_blocks():
    """A factory that declares ``env_index`` learns its slot's block (GRPO: one block, one task)."""
    pool = EnvWorkerPool("indexed_env:make", {"step_ms": 0.1, "image_size": 8, "cameras": ["a"]}, num_envs=4,
                         groups=1, workers=2, action_chunk=1, envs_per_index=2)
    try:
        assert [decode_instruction(row) for row in pool.read(0).instruction] == \
            ["env index 0", "env index 0", "env index 1", "env index 1"]
    finally:
        pool.close()


def test_workers_close_their_envs_when_the_pool_closes(tmp_path):
    """A worker closes its envs before it exits: renderers free their GL contexts while the display
    lives (at interpreter exit robosuite's EGL display is terminated first, and every context's
    finaliser then fails, hundreds of lines a pool)."""
    closed = tmp_path / "closed"
    pool = EnvWorkerPool("closing_env:make", {"closed": str(closed), "step_ms": 0.1, "image_size": 8,
                                              "cameras": ["a"]}, num_envs=4, groups=1, workers=2, action_chunk=1)
    pool.close()
    assert sorted(closed.read_text().split()) == ["0", "1", "2", "3"]
