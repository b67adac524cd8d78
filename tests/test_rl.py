"""Hand-computed checks of dvlad.rl: every expected number is worked out in the comments."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from dvlad.rl import (
    clipped_surrogate,
    explained_variance,
    gae,
    group_relative_advantages,
    grpo_loss,
    normalize_advantages,
    ppo_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --------------------------------------------------------------------------------------------- GAE


def test_gae_hand_computed_with_done_in_the_middle() -> None:
    # gamma = 0.9, lambda = 0.8, so gamma * lambda = 0.72.
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.0], [1.0, 0.5], [0.2, 1.0]], dtype=torch.float64)
    # env 0: the episode ends with step 1 (done in the middle); env 1: it ends with the last step,
    # so its bootstrap value (2.0) must be ignored.
    dones = torch.tensor([[0, 0], [1, 0], [0, 1]], dtype=torch.bool)
    bootstrap_value = t(0.4, 2.0)

    advantages, returns = gae(rewards, values, dones, bootstrap_value, gamma=0.9, gae_lambda=0.8)

    # env 0
    #   t=2: delta = 2 + 0.9*0.4*(1-0) - 0.2 = 2.16              A2 = 2.16
    #   t=1: delta = 0 + 0.9*0.2*(1-1) - 1.0 = -1.0              A1 = -1.0 + 0.72*0*2.16 = -1.0
    #   t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4                     A0 = 1.4 + 0.72*(-1.0) = 0.68
    #   returns = A + V = 0.68+0.5, -1.0+1.0, 2.16+0.2 = 1.18, 0.0, 2.36
    # env 1
    #   t=2: delta = 3 + 0.9*2.0*(1-1) - 1.0 = 2.0               A2 = 2.0
    #   t=1: delta = 1 + 0.9*1.0 - 0.5 = 1.4                     A1 = 1.4 + 0.72*2.0 = 2.84
    #   t=0: delta = 0 + 0.9*0.5 - 0.0 = 0.45                    A0 = 0.45 + 0.72*2.84 = 2.4948
    #   returns = 2.4948+0.0, 2.84+0.5, 2.0+1.0 = 2.4948, 3.34, 3.0
    expected_adv = torch.tensor([[0.68, 2.4948], [-1.0, 2.84], [2.16, 2.0]], dtype=torch.float64)
    expected_ret = torch.tensor([[1.18, 2.4948], [0.0, 3.34], [2.36, 3.0]], dtype=torch.float64)
    assert_close(advantages, expected_adv)
    assert_close(returns, expected_ret)


def test_gae_lambda_one_is_discounted_return_minus_value() -> None:
    # No dones, lambda = 1: returns are the Monte Carlo discounted sums bootstrapped with V_T.
    # returns_0 = 1 + 0.5*2 + 0.25*3 + 0.125*4 = 1 + 1 + 0.75 + 0.5 = 3.25
    # returns_1 = 2 + 0.5*3 + 0.25*4 = 4.5 ; returns_2 = 3 + 0.5*4 = 5.0
    rewards = t(1.0, 2.0, 3.0).unsqueeze(1)
    values = t(0.3, -0.7, 1.1).unsqueeze(1)
    dones = torch.zeros(3, 1)
    advantages, returns = gae(rewards, values, dones, t(4.0), gamma=0.5, gae_lambda=1.0)
    assert_close(returns.squeeze(1), t(3.25, 4.5, 5.0))
    assert_close(advantages.squeeze(1), t(3.25 - 0.3, 4.5 + 0.7, 5.0 - 1.1))


def test_gae_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="bootstrap_value"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3), 0.9, 0.9)


# ------------------------------------------------------------------------------------------- GRPO


def test_group_relative_advantages_two_interleaved_groups() -> None:
    # group 7: scores 1, 0, 2 -> mean 1, population var (0 + 1 + 1)/3 = 2/3, std = sqrt(2/3)
    #          advantages 0, -1/sqrt(2/3), +1/sqrt(2/3) = 0, -sqrt(1.5), sqrt(1.5) = 0, -1.2247.., 1.2247..
    # group 3: scores 0, 4 -> mean 2, population std 2 -> advantages -1, +1
    scores = t(1.0, 0.0, 0.0, 2.0, 4.0)
    group_ids = torch.tensor([7, 7, 3, 7, 3], dtype=torch.int64)
    adv = group_relative_advantages(scores, group_ids, eps=0.0)
    assert_close(adv, t(0.0, -1.224744871391589, -1.0, 1.224744871391589, 1.0))

    # with the default eps the std grows by 1e-6: group 3 gives -2/(2 + 1e-6)
    adv_eps = group_relative_advantages(scores, group_ids)
    assert_close(adv_eps[2], torch.tensor(-2.0 / (2.0 + 1e-6), dtype=torch.float64), rtol=1e-12, atol=0)


def test_group_relative_advantages_constant_group_is_exactly_zero() -> None:
    # 0.1 * 3 / 3 != 0.1 in floating point; the constant group must still give exact zeros.
    scores = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1])
    adv = group_relative_advantages(scores, group_ids)
    assert torch.equal(adv[:3], torch.zeros(3))
    # group 1: 1, 0 -> mean 0.5, std 0.5 -> +-0.5 / (0.5 + 1e-6)
    assert_close(adv[3:], torch.tensor([0.5, -0.5]) / (0.5 + 1e-6))


def test_group_relative_advantages_integer_scores() -> None:
    # success flags as int64: group 0 = [1, 0] -> mean 0.5, std 0.5 -> +1, -1
    adv = group_relative_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), eps=0.0)
    assert adv.is_floating_point()
    assert_close(adv, torch.tensor([1.0, -1.0]))


# ------------------------------------------------------------------------------- clipped surrogate


def test_clipped_surrogate_cases() -> None:
    # clip_coef = 0.2 (clip range [0.8, 1.2]), ratio_cap = 3
    ratio = t(1.1, 1.5, 0.5, 0.5, 1.5, 5.0, 5.0)
    adv = t(2.0, 2.0, 2.0, -1.0, -1.0, -1.0, 1.0)
    loss = clipped_surrogate(ratio, adv, clip_coef=0.2, ratio_cap=3.0)
    expected = t(
        -2.2,  # inside the clip:       max(-2*1.1, -2*1.1) = -2.2
        -2.4,  # A>0, above 1+eps:      max(-2*1.5, -2*1.2) = max(-3.0, -2.4) = -2.4
        -1.0,  # A>0, below 1-eps:      max(-2*0.5, -2*0.8) = max(-1.0, -1.6) = -1.0
        0.8,  # A<0, below 1-eps:       max(0.5, 0.8) = 0.8; min(0.8, 1*3) = 0.8
        1.5,  # A<0, above 1+eps:       max(1.5, 1.2) = 1.5; min(1.5, 3) = 1.5 (cap inactive)
        3.0,  # A<0, dual clip:         max(5.0, 1.2) = 5.0; min(5.0, 3) = 3.0
        -1.2,  # A>0, ratio 5: cap never applies: max(-5.0, -1.2) = -1.2
    )
    assert_close(loss, expected)


def test_clipped_surrogate_gradients() -> None:
    # d loss / d ratio: -A where the unclipped term is selected, 0 where a clip or the cap is.
    ratio = t(1.1, 1.5, 1.5, 5.0).requires_grad_()
    adv = t(2.0, 2.0, -1.0, -1.0)
    clipped_surrogate(ratio, adv, clip_coef=0.2, ratio_cap=3.0).sum().backward()
    assert ratio.grad is not None
    assert_close(ratio.grad, t(-2.0, 0.0, 1.0, 0.0))


def test_clipped_surrogate_rejects_cap_not_above_one() -> None:
    with pytest.raises(ValueError, match="ratio_cap"):
        clipped_surrogate(t(1.0), t(1.0), clip_coef=0.2, ratio_cap=1.0)


# -------------------------------------------------------------------------------------------- PPO


def _ppo_batch() -> dict[str, torch.Tensor]:
    # Samples 0 and 1 are valid; sample 2 is padding and would be dual-clipped if it counted.
    return {
        "new_logprob": t(math.log(1.1), math.log(0.5), math.log(5.0)),
        "behaviour_logprob": t(0.0, 0.0, 0.0),
        "advantages": t(2.0, -1.0, -1.0),
        "new_value": t(1.5, 0.1, 7.0),
        "old_value": t(1.0, 0.0, 0.0),
        "returns": t(2.0, -1.0, 3.0),
        "entropy": t(1.0, 3.0, 10.0),
        "mask": torch.tensor([True, True, False]),
    }


COEFS = {"clip_coef": 0.2, "ratio_cap": 3.0, "vf_coef": 0.5, "ent_coef": 0.01}


def test_ppo_loss_hand_computed() -> None:
    loss, stats = ppo_loss(**_ppo_batch(), **COEFS)
    # policy: ratio 1.1, A=2 -> -2.2 ; ratio 0.5, A=-1 -> 0.8      pg_loss = (-2.2 + 0.8)/2 = -0.7
    # value, sample 0: unclipped (1.5-2)^2 = 0.25; v_clipped = 1.0 + clamp(0.5, -0.2, 0.2) = 1.2,
    #                  clipped (1.2-2)^2 = 0.64; max = 0.64
    #        sample 1: unclipped (0.1+1)^2 = 1.21; v_clipped = 0 + 0.1 = 0.1, clipped 1.21; max 1.21
    #        v_loss = 0.5 * (0.64 + 1.21)/2 = 0.4625
    # entropy = (1 + 3)/2 = 2.0
    # loss = -0.7 - 0.01*2.0 + 0.5*0.4625 = -0.7 - 0.02 + 0.23125 = -0.48875
    assert_close(loss, torch.tensor(-0.48875, dtype=torch.float64))
    expected = {
        "loss": -0.48875,
        "pg_loss": -0.7,
        "v_loss": 0.4625,
        "entropy": 2.0,
        # ((1.1-1) - ln 1.1 + (0.5-1) - ln 0.5) / 2
        "approx_kl": ((0.1 - math.log(1.1)) + (-0.5 - math.log(0.5))) / 2,
        "clipfrac": 0.5,  # |1.1-1| = 0.1 <= 0.2 ; |0.5-1| = 0.5 > 0.2
        "ratio_mean": 0.8,  # (1.1 + 0.5)/2
        "ratio_max": 1.1,  # the padded ratio 5.0 does not count
        "truncated_frac": 0.0,  # only the padded sample would hit the cap
    }
    assert stats.keys() == expected.keys()
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_ppo_loss_unclipped_value_and_truncation_stat() -> None:
    batch = _ppo_batch()
    batch["mask"] = torch.ones(3)
    _, stats = ppo_loss(**batch, **{**COEFS, "vf_coef": 1.0}, clip_vloss=False)
    # all three valid, plain MSE: 0.5 * (0.25 + 1.21 + (7-3)^2)/3 = 0.5 * 17.46/3 = 2.91
    assert stats["v_loss"] == pytest.approx(2.91)
    # sample 2 (ratio 5, A=-1) now counts and is capped at 3: pg = (-2.2 + 0.8 + 3.0)/3 = 1.6/3
    assert stats["pg_loss"] == pytest.approx(1.6 / 3)
    assert stats["truncated_frac"] == pytest.approx(1 / 3)
    assert stats["ratio_max"] == pytest.approx(5.0)


def test_ppo_loss_masked_samples_change_nothing() -> None:
    reference = _ppo_batch()
    poisoned = _ppo_batch()
    for key in ("new_logprob", "behaviour_logprob", "advantages", "new_value", "old_value", "returns"):
        poisoned[key][2] = float("nan")
    poisoned["entropy"][2] = float("inf")

    def loss_and_grads(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        new_logprob = batch.pop("new_logprob").requires_grad_()
        new_value = batch.pop("new_value").requires_grad_()
        loss, _ = ppo_loss(new_logprob=new_logprob, new_value=new_value, **batch, **COEFS)
        loss.backward()
        assert new_logprob.grad is not None and new_value.grad is not None
        return loss.detach(), new_logprob.grad, new_value.grad

    ref_loss, ref_lp_grad, ref_v_grad = loss_and_grads(reference)
    loss, lp_grad, v_grad = loss_and_grads(poisoned)
    assert_close(loss, ref_loss)
    assert_close(lp_grad, ref_lp_grad)
    assert_close(v_grad, ref_v_grad)
    assert lp_grad[2].item() == 0.0 and v_grad[2].item() == 0.0
    # d pg_loss / d logprob_0 = -A * ratio / 2 = -2 * 1.1 / 2 = -1.1 (sample 0 is inside the clip)
    assert lp_grad[0].item() == pytest.approx(-1.1)


def test_ppo_loss_without_a_mask_counts_every_sample_exactly_as_an_all_ones_mask() -> None:
    batch = _ppo_batch()
    batch["proximal_logprob"] = t(0.1, -0.2, 0.3)
    ones_loss, ones_stats = ppo_loss(**{**batch, "mask": torch.ones(3)}, **COEFS)
    loss, stats = ppo_loss(**{**batch, "mask": None}, **COEFS)
    assert torch.equal(loss, ones_loss) and stats == ones_stats
    adv = batch["advantages"]
    assert torch.equal(normalize_advantages(adv), normalize_advantages(adv, torch.ones(3)))


def test_ppo_loss_empty_mask_is_zero() -> None:
    batch = _ppo_batch()
    batch["mask"] = torch.zeros(3, dtype=torch.bool)
    loss, stats = ppo_loss(**batch, **COEFS)
    assert loss.item() == 0.0
    assert all(value == 0.0 for value in stats.values())


# ------------------------------------------------------------------------------------------- GRPO


def test_grpo_loss_gradient_sign_and_zero_kl() -> None:
    behaviour_logprob = t(-1.0, -2.0)
    new_logprob = behaviour_logprob.clone().requires_grad_()
    advantages = t(1.0, -1.0)
    kwargs = {"clip_coef": 0.2, "ratio_cap": 3.0, "ent_coef": 0.0}
    loss, stats = grpo_loss(new_logprob, behaviour_logprob, advantages, t(0.5, 0.5), torch.ones(2), **kwargs)
    loss.backward()
    # ratio = 1 for both: d loss / d logprob_i = -A_i * ratio_i / 2 = -0.5, +0.5
    assert new_logprob.grad is not None
    assert_close(new_logprob.grad, t(-0.5, 0.5))
    assert stats["approx_kl"] == 0.0
    assert stats["clipfrac"] == 0.0
    assert stats["ratio_mean"] == 1.0
    assert "v_loss" not in stats

    # Raising the positive-advantage sample's log-prob lowers the loss: ratio e^0.01 < 1.2, unclipped,
    # loss = (-1 * e^0.01 + 1 * 1) / 2
    stepped = new_logprob.detach() + t(0.01, 0.0)
    loss_after, _ = grpo_loss(stepped, behaviour_logprob, advantages, t(0.5, 0.5), torch.ones(2), **kwargs)
    assert loss_after.item() < loss.item()
    assert loss_after.item() == pytest.approx((1.0 - math.exp(0.01)) / 2)


def test_decoupled_surrogate_clips_around_the_proximal_policy_and_weights_by_staleness() -> None:
    """A stale sample (behaviour log-prob -2, learner already at -1.5 when the update began):
    plain PPO sees ratio e^0.5 ≈ 1.65 and the sample is clipped before any step; decoupled PPO
    sees ratio 1 around the proximal policy, so it still has a gradient, weighted by the
    truncated importance weight e^0.5."""
    behaviour, proximal = t(-2.0), t(-1.5)
    new = proximal.clone().requires_grad_()
    kwargs = {"clip_coef": 0.2, "ratio_cap": 3.0, "ent_coef": 0.0}
    plain, plain_stats = grpo_loss(new, behaviour, t(1.0), t(0.0), torch.ones(1), **kwargs)
    plain.backward()
    assert plain_stats["clipfrac"] == 1.0 and new.grad is not None and new.grad.item() == 0.0
    new.grad = None
    loss, stats = grpo_loss(new, behaviour, t(1.0), t(0.0), torch.ones(1), proximal_logprob=proximal, **kwargs)
    loss.backward()
    assert stats["clipfrac"] == 0.0 and stats["ratio_mean"] == 1.0
    assert_close(loss, -t(math.exp(0.5))[0])
    assert_close(new.grad, -t(math.exp(0.5)))
    # the staleness weight is truncated at ratio_cap
    far, _ = grpo_loss(new.detach(), t(-5.0), t(1.0), t(0.0), torch.ones(1), proximal_logprob=proximal, **kwargs)
    assert_close(far, -t(3.0)[0])
    # without staleness the decoupled loss is the plain one
    same, _ = grpo_loss(new.detach(), proximal, t(1.0), t(0.0), torch.ones(1), proximal_logprob=proximal, **kwargs)
    reference, _ = grpo_loss(new.detach(), proximal, t(1.0), t(0.0), torch.ones(1), **kwargs)
    assert_close(same, reference)


def test_grpo_loss_entropy_bonus() -> None:
    # ratio 1, A = 0: pg_loss 0, loss = -0.1 * mean(entropy) = -0.1 * (1 + 2)/2 = -0.15
    loss, stats = grpo_loss(
        t(0.0, 0.0),
        t(0.0, 0.0),
        t(0.0, 0.0),
        t(1.0, 2.0),
        torch.ones(2),
        clip_coef=0.2,
        ratio_cap=3.0,
        ent_coef=0.1,
    )
    assert_close(loss, torch.tensor(-0.15, dtype=torch.float64))
    assert stats["entropy"] == pytest.approx(1.5)


# -------------------------------------------------------------------------------- normalisation


def test_normalize_advantages_masked() -> None:
    # valid: 1, 2, 3 -> mean 2, population std sqrt(2/3); the padded 100 must not shift them
    adv = normalize_advantages(t(1.0, 2.0, 3.0, 100.0), torch.tensor([1.0, 1.0, 1.0, 0.0]), eps=0.0)
    assert_close(adv, t(-1.224744871391589, 0.0, 1.224744871391589, 0.0))


def test_normalize_advantages_single_sample_is_finite() -> None:
    adv = normalize_advantages(t(5.0, 9.0), torch.tensor([True, False]))
    assert_close(adv, t(0.0, 0.0))


# ------------------------------------------------------------------------------ explained variance


def test_explained_variance_as_cleanrl_computes_it() -> None:
    # var(returns) = 2/3; returns - values = (0, 1, -1), var 2/3: no better than the mean
    assert explained_variance(t(1.0, 2.0, 3.0), t(1.0, 3.0, 2.0)) == pytest.approx(0.0)
    assert explained_variance(t(1.0, 3.0, 2.0), t(1.0, 3.0, 2.0)) == 1.0
    assert explained_variance(t(1.0, 2.0, 3.0), t(2.0, 2.0, 2.0)) is None  # CleanRL's NaN: returns constant
    assert explained_variance(t(), t()) is None
