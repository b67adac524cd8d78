"""The learner without processes: updates, versions, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dvla.checkpoint import CHECKPOINT_NAME
from dvla.metric_names import AUX_LOSS, PG_LOSS, V_LOSS
from dvla.spec import JobSpec
from dvlad.lanes.learner import Learner, LearnerConfig
from dvlad.lanes.trajectory import SegmentShape, segment_layout
from dvlad.spaces import EnvSpec

ENV = EnvSpec(cameras={"image": (16, 16)}, proprio_dim=4, max_episode_steps=10)


def _spec(**policy_args) -> JobSpec:
    spec = JobSpec()
    spec.policy.args = {"d_model": 16, "layers": 1, "heads": 2, "patch_grid": 2, **policy_args}
    spec.algo.update_epochs, spec.algo.minibatches = 1, 1
    spec.train.resume = False
    return spec


def _segments(groups: int = 2, steps: int = 4, envs: int = 3) -> list[dict[str, np.ndarray]]:
    layout = segment_layout(ENV, SegmentShape(steps, envs, 1, 16), 1)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(groups):
        seg = {k: np.zeros(v.shape[1:], v.dtype) for k, v in layout.items()}
        seg["image/image"][:] = rng.integers(0, 255, seg["image/image"].shape)
        seg["tokens"][:] = rng.integers(0, 256, seg["tokens"].shape)
        seg["logprob"][:] = -5.5
        seg["reward"][:] = rng.normal(size=seg["reward"].shape)
        seg["valid"][:] = True
        seg["env_steps"][:] = 1
        out.append(seg)
    return out


def test_update_trains_on_a_rollout_and_publishes_the_next_version(tmp_path):
    learner = Learner(LearnerConfig(_spec(), ENV, str(tmp_path)))
    before = learner.flat.clone()
    stats = learner.update(_segments())
    assert learner.version == stats.version == 1
    assert stats.samples == 2 * 4 * 3 and stats.trained_env_steps == 24
    assert not torch.equal(before, learner.flat)  # the flat buffer the weight plane copies moved
    assert stats.staleness_hist == (24,)  # acted with version 0, trained at version 0


def test_invalid_rows_are_not_trained_on(tmp_path):
    learner = Learner(LearnerConfig(_spec(), ENV, str(tmp_path)))
    segments = _segments()
    for seg in segments:
        seg["valid"][:] = False
    before = learner.flat.clone()
    stats = learner.update(segments)
    assert stats.samples == 0 and torch.equal(before, learner.flat)
    assert stats.losses == {} and stats.explained_variance is None


def test_checkpoint_restores_weights_optimizer_and_version(tmp_path):
    learner = Learner(LearnerConfig(_spec(), ENV, str(tmp_path)))
    for _ in range(2):
        learner.update(_segments())
    learner.save()
    spec = _spec()
    spec.train.resume = True
    again = Learner(LearnerConfig(spec, ENV, str(tmp_path)))
    assert again.version == 2 and again.trained_env_steps == learner.trained_env_steps
    assert torch.equal(again.flat, learner.flat)
    a, b = learner.optimizer.state_dict()["state"], again.optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


def test_a_job_can_start_from_another_runs_weights(tmp_path):
    first = Learner(LearnerConfig(_spec(), ENV, str(tmp_path / "a")))
    first.update(_segments())
    first.save()
    spec = _spec()
    spec.policy.checkpoint = str(tmp_path / "a")  # a run directory or the file itself
    second = Learner(LearnerConfig(spec, ENV, str(tmp_path / "b")))
    assert torch.equal(second.flat, first.flat) and second.version == 0


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    Learner(LearnerConfig(_spec(), ENV, str(tmp_path / "a"))).save()
    spec = _spec(d_model=32)
    spec.policy.checkpoint = str(tmp_path / "a" / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="other policy arguments"):
        Learner(LearnerConfig(spec, ENV, str(tmp_path / "b")))


@pytest.mark.slow  # 81 learner updates to see the loss fall: half a minute on 2 cores
def test_aux_loss_trains_on_the_env_labels_only_when_asked(tmp_path):
    env = EnvSpec(cameras={"image": (16, 16)}, proprio_dim=4, max_episode_steps=10, aux_dim=2)
    layout = segment_layout(env, SegmentShape(4, 3, 1, 16), 1)
    segments = []
    for seg in _segments():
        seg["aux"] = np.zeros(layout["aux"].shape[1:], np.float32)
        seg["aux"][:] = (0.5, -0.5)  # one point: the coordinate channels can learn where it is
        segments.append(seg)
    spec = _spec()
    spec.algo.aux_coef, spec.algo.learning_rate = 5.0, 3e-3
    learner = Learner(LearnerConfig(spec, env, str(tmp_path / "aux")))
    first = learner.update(segments).losses[AUX_LOSS]
    for _ in range(80):
        last = learner.update(segments).losses[AUX_LOSS]
    assert first > 1.0 and last < 0.7 * first  # a cross-entropy over tiny-vla's 8×8 named map
    spec.algo.aux_coef = 0.0
    assert AUX_LOSS not in Learner(LearnerConfig(spec, env, str(tmp_path / "none"))).update(segments).losses


def test_ppo_reports_its_critics_explained_variance_and_grpo_none(tmp_path):
    """CleanRL's ``1 - Var(returns - values) / Var(returns)`` over the valid samples, where the
    returns are GAE's (advantages + the recorded values), bootstrapped from the policy's value of
    the state after each segment."""
    segments = _segments()
    for i, seg in enumerate(segments):
        seg["value"][:] = np.linspace(-1.0, 1.0, seg["value"].size).reshape(seg["value"].shape) * (i + 1)
        seg["done"][-1] = True  # every episode ends in the segment: no bootstrap, returns by hand
        seg["valid"][0, 0] = False  # left out of the figure
    learner = Learner(LearnerConfig(_spec(), ENV, str(tmp_path / "ppo")))
    stats = learner.update(segments)
    gamma, lam = learner.args.gamma, learner.args.gae_lambda
    values, returns = [], []
    for seg in segments:
        next_value, advantage = np.zeros(3), np.zeros(3)
        for t in reversed(range(4)):
            not_done = 0.0 if t == 3 else 1.0
            delta = seg["reward"][t] + gamma * next_value * not_done - seg["value"][t]
            advantage = delta + gamma * lam * not_done * advantage
            next_value = seg["value"][t]
            values.append(seg["value"][t][seg["valid"][t]])
            returns.append((advantage + seg["value"][t])[seg["valid"][t]])
    y_pred, y_true = np.concatenate(values), np.concatenate(returns)
    assert stats.explained_variance == pytest.approx(1 - np.var(y_true - y_pred) / np.var(y_true), rel=1e-4)
    assert {PG_LOSS, V_LOSS} <= stats.losses.keys()

    spec = _spec()
    spec.algo.name, spec.algo.group_size = "grpo", 3
    grpo = Learner(LearnerConfig(spec, ENV, str(tmp_path / "grpo"))).update(segments)
    assert grpo.explained_variance is None and V_LOSS not in grpo.losses  # no critic
