"""The built-in envs against the protocol, on real MuJoCo (OSMesa on a CPU machine)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from dvlad.envs import ENV_FACTORIES, make_env
from dvlad.envs.base import Env, Observation, StepResult
from dvlad.envs.gl import NVIDIA_DEVICE, configure_mujoco_gl
from dvlad.envs.synthetic import SyntheticEnv, target_action
from dvlad.spaces import ACTION_DIM


@pytest.fixture(scope="module")
def reach():
    env = make_env("reach")
    yield env
    env.close()


def greedy(env) -> np.ndarray:
    """Scripted controller: head straight for the target cube, reading the sim state."""
    action = np.zeros(ACTION_DIM)
    action[:3] = np.clip((env.target_position - env.tip_position) / env.max_delta, -1.0, 1.0)
    return action


def run_episode(env, policy, seed: int) -> list[StepResult]:
    env.reset(seed=seed)
    results = []
    while not results or not (results[-1].terminated or results[-1].truncated):
        results.append(env.step(policy()))
    return results


def check_obs(obs: Observation, env: Env) -> None:
    assert set(obs.images) == set(env.spec.cameras)
    for name, (h, w) in env.spec.cameras.items():
        assert obs.images[name].shape == (h, w, 3)
        assert obs.images[name].dtype == np.uint8
    assert obs.proprio.shape == (env.spec.proprio_dim,)
    assert obs.proprio.dtype == np.float32
    assert isinstance(obs.instruction, str) and obs.instruction
    if env.spec.aux_dim:
        assert obs.aux is not None and obs.aux.shape == (env.spec.aux_dim,) and obs.aux.dtype == np.float32


def test_configure_mujoco_gl_keeps_user_choice_and_picks_by_gpu(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    assert configure_mujoco_gl() == "glfw"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    expected = "egl" if os.path.exists(NVIDIA_DEVICE) else "osmesa"
    assert configure_mujoco_gl() == expected
    assert os.environ["MUJOCO_GL"] == os.environ["PYOPENGL_PLATFORM"] == expected


def test_reach_protocol(reach):
    assert isinstance(reach, Env)
    assert reach.spec.cameras == {"image": (64, 64)}
    assert reach.spec.proprio_dim == 4
    assert reach.spec.max_episode_steps == 40
    assert reach.spec.num_init_states > 0
    obs = reach.reset(seed=0)
    check_obs(obs, reach)
    assert obs.instruction == f"touch the {reach.target_colour} cube"
    result = reach.step(np.zeros(ACTION_DIM, np.float32))
    check_obs(result.obs, reach)
    assert isinstance(result.reward, float)
    assert not result.terminated and not result.truncated and not result.success


def test_reach_aux_labels_locate_the_named_cube_in_the_image(reach):
    """The labels an auxiliary loss trains on: the named cube's image position. The pixel
    there shows the named colour, and the label follows the cube, not the gripper."""
    from dvlad.envs.reach import COLOURS

    assert reach.spec.aux_dim == 2
    labels = set()
    for seed in range(6):
        obs = reach.reset(seed=seed)
        assert np.all(np.abs(obs.aux) < 1.0)
        h, w = reach.spec.cameras["image"]
        col, row = int((obs.aux[0] + 1) * w / 2), int((obs.aux[1] + 1) * h / 2)
        pixel = obs.images["image"][row, col] / 255.0
        assert np.linalg.norm(pixel - np.array(COLOURS[reach.target_colour])) < 0.2
        moved = reach.step(greedy(reach)).obs
        np.testing.assert_array_equal(moved.aux, obs.aux)
        labels.add(tuple(obs.aux))
    assert len(labels) == 6


def test_reach_is_deterministic(reach):
    actions = np.random.default_rng(1).uniform(-1, 1, (5, ACTION_DIM))

    def rollout(env) -> list[Observation]:
        return [env.reset(seed=7)] + [env.step(a).obs for a in actions]

    twin = make_env("reach")
    try:
        for a, b in zip(rollout(reach), rollout(twin), strict=True):
            np.testing.assert_array_equal(a.images["image"], b.images["image"])
            np.testing.assert_array_equal(a.proprio, b.proprio)
            assert a.instruction == b.instruction
    finally:
        twin.close()

    layouts = []
    for seed in range(4):
        reach.reset(seed=seed)
        layouts.append(reach.cube_positions)
    assert all(not np.allclose(layouts[0], layout) for layout in layouts[1:])

    first = reach.reset(init_state=3).images["image"]
    reach.reset(seed=123)
    np.testing.assert_array_equal(reach.reset(init_state=3).images["image"], first)


def test_reach_scripted_controller_succeeds(reach):
    for seed in range(5):
        results = run_episode(reach, lambda: greedy(reach), seed)
        assert results[-1].success and results[-1].terminated and not results[-1].truncated
        assert len(results) < reach.spec.max_episode_steps
        assert all(r.reward > 0 for r in results), "every step toward the target is progress"
        assert results[-1].reward > 1.0


def test_reach_random_actions_rarely_succeed(reach):
    rng = np.random.default_rng(0)
    successes = sum(run_episode(reach, lambda: rng.uniform(-1, 1, ACTION_DIM), 100 + i)[-1].success for i in range(20))
    assert successes <= 5


def test_reach_noop_episode_truncates(reach):
    results = run_episode(reach, lambda: np.zeros(ACTION_DIM), seed=3)
    assert len(results) == reach.spec.max_episode_steps
    assert results[-1].truncated and not results[-1].terminated and not results[-1].success
    assert all(not r.success for r in results)


def test_reach_image_shows_target_colour(reach):
    seed = next(s for s in range(100) if reach.reset(seed=s).instruction == "touch the red cube")
    image = reach.reset(seed=seed).images["image"].astype(int)
    red = (image[..., 0] > 150) & (image[..., 1] < 70) & (image[..., 2] < 70)
    assert red.sum() >= 15
    # Moving the gripper over the target changes the picture.
    after = reach.step(greedy(reach)).obs.images["image"].astype(int)
    assert np.abs(after - image).sum() > 0


def test_synthetic_protocol_and_pattern():
    env = make_env("synthetic", step_ms=0.5, image_size=16, cameras=["a", "b", "c"], proprio_dim=5)
    assert isinstance(env, Env)
    assert env.spec.cameras == {"a": (16, 16), "b": (16, 16), "c": (16, 16)}
    for episode_id in range(3):
        obs = env.reset(seed=episode_id)
        check_obs(obs, env)
        assert obs.instruction == f"synthetic task {env.task}"
        for step in range(4):
            if step:
                obs = env.step(np.zeros(ACTION_DIM)).obs
            value = (step + 31 * episode_id) % 251
            assert all((img == value).all() for img in obs.images.values())
            assert obs.proprio[0] == step and obs.proprio[1] == episode_id
    target = target_action(env.task)
    result = env.step(target)
    assert result.success and result.terminated and result.reward == pytest.approx(1.0)
    assert env.step(-target).reward < 0.8


def test_synthetic_burns_cpu_time_and_truncates():
    env = SyntheticEnv(step_ms=5.0, image_size=8, max_episode_steps=10)
    env.reset(seed=0)
    start = time.thread_time()
    results = [env.step(-env.target) for _ in range(10)]
    assert time.thread_time() - start >= 0.8 * 10 * 5.0 / 1000
    assert results[-1].truncated and not any(r.success for r in results)
    assert env.reset(init_state=2).instruction == env.reset(init_state=2).instruction


def test_make_env_unknown_name_lists_known_envs():
    with pytest.raises(ValueError, match="nope") as info:
        make_env("nope")
    for name in ENV_FACTORIES:
        assert name in str(info.value)
    with pytest.raises(TypeError):
        make_env("reach", colour="red")


def test_make_env_user_factory():
    env = make_env("dvlad.envs.synthetic:SyntheticEnv", step_ms=0.1, image_size=8)
    assert isinstance(env, SyntheticEnv)
    assert env.spec.cameras == {"agentview": (8, 8), "wrist": (8, 8)}


def test_reach_start_height_is_honoured_and_checked():
    env = make_env("reach", start_height=0.06)
    try:
        env.reset(seed=4)
        assert abs(env.tip_position[2] - 0.06) < 0.002
        with pytest.raises(ValueError, match="start_height"):
            make_env("reach", start_height=1.0)
    finally:
        env.close()
