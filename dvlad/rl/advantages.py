"""Advantage estimators: GAE for PPO (with a critic) and group-relative scores for GRPO (without one).

Both produce *targets*: nothing here is differentiated through, so inputs are detached and the
results carry no autograd history. They know nothing about environments or processes; the learner
lane hands them stacked tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    bootstrap_value: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016) over a [T, N] rollout segment.

    Convention (differs from CleanRL, which stores the *previous* step's done): ``dones[t]`` is 1
    when the episode ended with the transition taken at step t, so the value of the state after it
    is not bootstrapped across the boundary. ``bootstrap_value`` is V(s_T), the value of the state
    that follows the last stored step of each env; it is ignored for an env whose last step ended
    its episode. A time-limit truncation that should still bootstrap is the caller's business
    (fold ``gamma * V(s_final)`` into that step's reward and mark it done).

        delta_t  = r_t + gamma * V_{t+1} * (1 - d_t) - V_t
        A_t      = delta_t + gamma * lambda * (1 - d_t) * A_{t+1}
        returns  = A + V                       (the critic's regression target)

    Args:
        rewards: [T, N] reward of the transition taken at step t.
        values: [T, N] V(s_t) as estimated when the segment was collected.
        dones: [T, N] bool or float, 1 where the episode ended with step t.
        bootstrap_value: [N] V(s_T).
        gamma: discount factor.
        gae_lambda: GAE lambda (0: one-step TD, 1: Monte Carlo minus baseline).

    Returns:
        ``(advantages, returns)``, both [T, N] in ``values``' dtype.
    """
    if rewards.dim() != 2 or rewards.shape != values.shape or rewards.shape != dones.shape:
        raise ValueError(
            f"rewards, values and dones must share a [T, N] shape; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(dones.shape)}"
        )
    num_steps, num_envs = values.shape
    if bootstrap_value.shape != (num_envs,):
        raise ValueError(f"bootstrap_value must be [{num_envs}]; got {tuple(bootstrap_value.shape)}")

    values = values.detach()
    rewards = rewards.detach().to(values.dtype)
    nextnonterminals = 1.0 - dones.detach().to(values.dtype)
    bootstrap_value = bootstrap_value.detach().to(values.dtype)

    advantages = torch.zeros_like(values)
    lastgaelam = torch.zeros_like(bootstrap_value)
    # Backwards in time: A_t needs A_{t+1}. T is a rollout length (tens to hundreds), so a Python
    # loop over it is cheap; every step is vectorised over the N envs.
    for t in reversed(range(num_steps)):
        nextvalues = bootstrap_value if t == num_steps - 1 else values[t + 1]
        nextnonterminal = nextnonterminals[t]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
        advantages[t] = lastgaelam
    returns = advantages + values
    return advantages, returns


def group_relative_advantages(scores: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO advantages: each score standardised within its group (Shao et al. 2024).

    A group is the set of rollouts started from the same task/initial state; comparing a rollout
    only with its siblings replaces the learned critic as the baseline. The standard deviation is
    the population one (``unbiased=False``) so a group of one is defined (its advantage is 0).
    A group whose scores are all identical carries no learning signal and gets exact zeros (not
    ``0 / eps`` rounding noise), so it contributes nothing to the policy gradient.

    Args:
        scores: [M] one scalar per rollout (e.g. episode return or success).
        group_ids: [M] int64 group label per rollout; any values, need not be contiguous or sorted.
        eps: added to the group std to keep near-constant groups finite.

    Returns:
        [M] advantages, floating (``scores``' dtype, or the default dtype for integer scores).
    """
    if scores.dim() != 1 or group_ids.shape != scores.shape:
        raise ValueError(
            f"scores and group_ids must both be [M]; got {tuple(scores.shape)}, {tuple(group_ids.shape)}"
        )
    scores = scores.detach()
    if not scores.is_floating_point():
        scores = scores.to(torch.get_default_dtype())

    # Compact arbitrary labels to 0..G-1 so per-group sums can be index_add-ed into [G] buffers.
    _, group_index = torch.unique(group_ids, return_inverse=True)
    num_groups = int(group_index.max().item()) + 1 if group_index.numel() > 0 else 0

    group_count = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device)
    group_count.index_add_(0, group_index, torch.ones_like(scores))
    group_sum = torch.zeros_like(group_count).index_add_(0, group_index, scores)
    group_mean = group_sum / group_count

    # Two-pass variance (deviations first) rather than E[x^2] - E[x]^2, which cancels badly.
    deviation = scores - group_mean[group_index]
    group_var = torch.zeros_like(group_count).index_add_(0, group_index, deviation.square()) / group_count
    group_std = group_var.sqrt()
    advantages = deviation / (group_std[group_index] + eps)

    group_max = torch.full_like(group_count, -torch.inf).scatter_reduce_(0, group_index, scores, "amax")
    group_min = torch.full_like(group_count, torch.inf).scatter_reduce_(0, group_index, scores, "amin")
    constant_group = (group_max == group_min)[group_index]
    return torch.where(constant_group, torch.zeros_like(advantages), advantages)
