"""Behaviour cloning: the scripted reach expert and its demonstrations in LIBERO's layout, reading a
LIBERO-layout file, and the bc learner's loss falling on the expert's demonstrations (real MuJoCo,
real HDF5, real torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dvla.metric_names import AUX_LOSS, LOSS
from dvla.spec import JobSpec, SpecError, parse_spec
from dvlad.demos import read_demonstrations
from dvlad.envs.reach import ReachEnv
from dvlad.envs.reach_expert import expert_action, record
from dvlad.lanes.learner import Learner, LearnerConfig
from dvlad.policies.checkpoint import load_checkpoint
from dvlad.policies.random_vlm import write_checkpoint
from dvlad.runtime.job import run_job
from dvlad.spaces import EnvSpec
from tests.test_learner import _segments

REACH = EnvSpec(cameras={"image": (16, 16)}, proprio_dim=4, max_episode_steps=10)
REACH_AUX = EnvSpec(cameras={"image": (16, 16)}, proprio_dim=4, max_episode_steps=10, aux_dim=2)


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demos") / "reach.hdf5"
    assert record(path, episodes=12, seed=1, image_size=16) == 1.0  # the expert always touches its cube
    return path


def test_the_expert_writes_libero_s_layout(reach_demos: Path) -> None:
    import h5py

    with h5py.File(reach_demos, "r") as f:
        demo = f["data/demo_0"]
        steps = int(demo.attrs["num_samples"])
        assert demo["actions"].shape == (steps, 7) and demo["obs/image_rgb"].shape == (steps, 16, 16, 3)
        assert demo["obs/proprio"].shape == (steps, 4)
        assert str(demo.attrs["language_instruction"]).startswith("touch the ")
    demos = read_demonstrations(reach_demos, REACH, action_chunk=2)
    assert demos.actions.shape == (len(demos), 2, 7) and np.abs(demos.actions).max() <= 1.0
    assert len(set(demos.instructions)) > 1  # the named colour varies between episodes


def test_noisy_demonstrations_record_the_expert_s_clean_actions_off_its_path(reach_demos: Path, tmp_path: Path) -> None:
    """DART: the env executes the expert's action plus noise, the file holds the expert's own action for
    each state visited, so the demonstrations cover states off the straight path, each labelled with
    the way back; and the env's auxiliary labels travel with them."""
    noisy = tmp_path / "noisy.hdf5"
    assert record(noisy, episodes=12, seed=1, noise=1.0, image_size=16) > 0.5
    clean, shaken = read_demonstrations(reach_demos, REACH_AUX), read_demonstrations(noisy, REACH_AUX)
    assert len(shaken) > 1.3 * len(clean)  # the noise takes the gripper off the ~3-step straight path
    env = ReachEnv(seed=1, image_size=16)
    try:  # the first written demonstration starts as one of the seeded starts: its label is the clean expert's
        firsts = [(env.reset(seed=1 * 1_000_003 + episode), expert_action(env)) for episode in range(12)]
    finally:
        env.close()
    label = next(action for obs, action in firsts if np.array_equal(obs.images["image"], shaken.images["image"][0]))
    assert np.array_equal(shaken.actions[0, 0], label)
    assert shaken.aux is not None and shaken.aux.shape == (len(shaken), 2)
    assert read_demonstrations(noisy, REACH).aux is None  # an env without labels reads none
    with pytest.raises(ValueError, match="noise is a standard deviation"):
        record(tmp_path / "bad.hdf5", episodes=1, noise=-0.1, image_size=16)


def test_a_libero_file_reads_upright_with_the_env_s_proprio(tmp_path: Path) -> None:
    """As LIBERO publishes them: one task per file, images as robosuite renders them (upside down),
    proprio as ee_states and gripper_states."""
    import h5py

    frames = np.arange(3 * 8 * 8 * 3, dtype=np.uint8).reshape(3, 8, 8, 3)
    actions = np.linspace(-1, 1, 21, dtype=np.float32).reshape(3, 7)
    with h5py.File(tmp_path / "task_demo.hdf5", "w") as f:
        f.create_group("data").attrs["problem_info"] = json.dumps({"language_instruction": "open the drawer"})
        demo = f.create_group("data/demo_0")
        demo.create_dataset("actions", data=actions)
        demo.create_dataset("obs/agentview_rgb", data=frames[:, ::-1, ::-1])
        demo.create_dataset("obs/eye_in_hand_rgb", data=frames[:, ::-1, ::-1])
        demo.create_dataset("obs/ee_states", data=np.ones((3, 6)))
        demo.create_dataset("obs/gripper_states", data=np.zeros((3, 2)))
    libero = EnvSpec(cameras={"agentview": (8, 8), "wrist": (8, 8)}, proprio_dim=8, max_episode_steps=10)
    demos = read_demonstrations(tmp_path, libero, action_chunk=2)  # a suite's folder
    assert np.array_equal(demos.images["agentview"], frames) and np.array_equal(demos.images["wrist"], frames)
    assert demos.proprio.tolist()[0] == [1.0] * 6 + [0.0] * 2
    assert demos.instructions == ["open the drawer"] * 3
    assert np.array_equal(demos.actions[:, 0], actions) and np.array_equal(demos.actions[-1, 1], actions[-1])
    with pytest.raises(ValueError, match=r"frames are \(8, 8, 3\), the env renders \(16, 16, 3\)"):
        read_demonstrations(tmp_path, EnvSpec(cameras={"agentview": (16, 16)}, proprio_dim=8, max_episode_steps=10))


def test_bc_needs_demonstrations() -> None:
    with pytest.raises(SpecError, match="needs demonstrations"):
        parse_spec('[algo]\nname = "bc"\n')


@pytest.mark.slow  # 31 learner updates: 18 s on 2 shared cores
def test_bc_learns_the_expert_s_actions(reach_demos: Path, tmp_path: Path) -> None:
    spec = JobSpec()
    spec.policy.args = {"d_model": 16, "layers": 1, "heads": 2, "patch_grid": 2}
    spec.algo.name, spec.algo.demonstrations, spec.algo.learning_rate = "bc", str(reach_demos), 3e-3
    spec.algo.update_epochs, spec.algo.minibatches = 1, 1
    spec.train.resume = False
    spec.algo.aux_coef = 1.0
    learner = Learner(LearnerConfig(spec, REACH_AUX, str(tmp_path)))
    first = learner.update(_segments(envs=8)).losses  # the rollout's rows say how many to draw
    for _ in range(30):
        last = learner.update(_segments(envs=8)).losses
    assert first[LOSS] > 0.9 * np.log(256)  # a broad first policy …
    assert last[LOSS] < 0.6 * first[LOSS]  # … that the demonstrations narrow down
    assert last[AUX_LOSS] < first[AUX_LOSS]  # and the demonstrations' labels say where the named cube is


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["tiny-vla", "hf-vla"])
def test_a_bc_job_then_grpo_from_its_checkpoint(reach_demos: Path, small_spec, tmp_path: Path, policy: str) -> None:
    """The chain of two job files: behaviour cloning through the whole engine (the rollouts measure the
    policy), then GRPO starting from its weights (``policy.checkpoint``); with tiny-vla and with a tiny
    SmolVLM backbone (hf-vla, LoRA)."""
    overrides = {}
    if policy == "hf-vla":
        overrides = {"policy__name": "hf-vla", "policy__args": {
            "pretrained": str(write_checkpoint(tmp_path / "smolvlm", "idefics3")), "lora": {"r": 4}}}
    bc = small_spec(env__name="reach", env__args={"image_size": 16}, algo__name="bc",
                    algo__demonstrations=str(reach_demos), **overrides)
    bc.train.total_env_steps = 256
    result = run_job(bc, tmp_path / "bc", quiet=True)
    assert result["status"] == "succeeded", result
    assert result["version"] >= 1
    grpo = small_spec(env__name="reach", env__args={"image_size": 16, "max_episode_steps": 8}, algo__name="grpo",
                      algo__group_size=4, pipeline__segment_steps=8, policy__checkpoint=str(tmp_path / "bc"),
                      **overrides)
    grpo.train.total_env_steps = 128
    result = run_job(grpo, tmp_path / "grpo", quiet=True)
    assert result["status"] == "succeeded", result
    bc_weights = load_checkpoint(tmp_path / "bc" / "checkpoint.safetensors")[0]["policy.flat"]
    reach = EnvSpec(cameras={"image": (16, 16)}, proprio_dim=4, max_episode_steps=8, aux_dim=2)  # as the job's env
    learner = Learner(LearnerConfig(grpo, reach, str(tmp_path / "fresh")))
    assert torch.equal(learner.flat, bc_weights)  # where GRPO started


def test_a_relative_demonstrations_path_is_the_job_file_s(tmp_path: Path) -> None:
    from dvla.admission import admit

    data = {"algo": {"name": "bc", "demonstrations": "demos/reach.hdf5"}}
    with pytest.raises(SpecError) as refused:
        admit(data)  # as the daemon, which would look it up in the job's run directory
    assert [issue.key for issue in refused.value.issues] == ["algo.demonstrations"]
    with pytest.raises(SpecError, match=r"reach.hdf5: no such file or directory \(the relative 'demos/reach.hdf5'"):
        admit(data, tmp_path)  # the job would fail on it once it ran
    (tmp_path / "demos").mkdir()
    (tmp_path / "demos" / "reach.hdf5").write_bytes(b"")
    assert admit(data, tmp_path)[0].algo.demonstrations == str(tmp_path / "demos" / "reach.hdf5")
