"""The algorithms a job trains with, each a record of the two steps in which they differ.

Why records: the learner's update is the same loop for every algorithm (CleanRL's: score the rollout
once, then epochs of shuffled minibatches, each a forward pass, a loss and a clipped gradient step).
Only two steps differ: how a rollout is scored (:attr:`Algorithm.advantages`) and what one minibatch
minimises (:attr:`Algorithm.loss`). The learner picks its record once, by ``algo.name``; a new
algorithm is a new record in :data:`ALGORITHMS` (and its name in ``dvla.spec``), not branches
through the update.

Pure maths on stacked tensors, like the rest of ``dvlad.rl``: the one thing that needs the policy,
the value of the state after a rollout (GAE's bootstrap), comes in as a function the learner gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dvla.spec import AlgoSection
from dvlad.rl.advantages import gae, group_relative_advantages
from dvlad.rl.losses import bc_loss, grpo_loss, normalize_advantages, ppo_loss


@dataclass(frozen=True)
class Rollout:
    """What the actor recorded of one rollout, every tensor [S, T, E]: one segment per env group,
    its steps, the group's envs."""

    rewards: Tensor
    values: Tensor
    """V(s_t) as the acting policy estimated it."""
    dones: Tensor
    """True where the episode ended with step t."""
    successes: Tensor
    valid: Tensor
    """False for steps that hold no transition (dropped episodes, the rest of an ended episode)."""


@dataclass(frozen=True)
class Minibatch:
    """One minibatch of B env steps. Each of a step's K action tokens is a sample of its own that
    shares the step's advantage, value and return (a token-level surrogate): log-probs and entropy
    are [B, K], the rest [B] (:meth:`per_token` spreads them)."""

    newlogprob: Tensor
    """log pi_new of each sampled token, differentiable."""
    logprobs: Tensor
    """The behaviour log-probs the actor recorded."""
    entropy: Tensor
    newvalue: Tensor
    """V_new(s), differentiable."""
    values: Tensor
    """V(s) the actor recorded."""
    advantages: Tensor
    returns: Tensor
    """The critic's regression target, ``advantages + values`` (GAE's returns)."""
    proximal_logprob: Tensor | None
    """log-probs under the weights as the update began (``algo.proximal_clip``), else None."""

    def per_token(self, x: Tensor) -> Tensor:
        """A per-step [B] tensor repeated for each of the step's tokens: [B·K]."""
        return x.repeat_interleave(self.newlogprob.shape[1])


@dataclass(frozen=True)
class TrainingRows:
    """What one update trains on, one row per sample: a rollout's steps as the actor recorded them and
    scored, or demonstrated steps (behaviour cloning). The learner's loop reads both alike."""

    obs: dict[str, Tensor]
    """The observation arrays, [N, ...] each: ``image/CAMERA``, ``proprio``, ``instruction``."""
    actions: Tensor
    """The action tokens, [N, K]."""
    logprobs: Tensor
    """Their behaviour log-probs, [N, K] (zeros for demonstrations, whose loss does not read them)."""
    advantages: Tensor
    values: Tensor
    """[N] each (zeros for demonstrations)."""
    aux: Tensor | None
    """The env's auxiliary labels, [N, A], where the rows carry them."""
    inds: Tensor
    """The rows to train on (a rollout's valid ones)."""

    @property
    def returns(self) -> Tensor:
        """The critic's regression target, GAE's returns."""
        return self.advantages + self.values


NextValue = Callable[[], Tensor]
"""V(s_T) of the state after each segment's last step, [S, E]; computed only when called."""


@dataclass(frozen=True)
class Algorithm:
    """One algorithm's choices. Both functions take the job's ``[algo]`` section (CleanRL's ``args``)."""

    name: str
    advantages: Callable[[Rollout, AlgoSection, NextValue], Tensor] | None
    """A rollout's per-step advantages, [S, T, E]; None: the algorithm trains on demonstrations, not on the
    rollout (which then only measures the policy)."""
    loss: Callable[[Minibatch, AlgoSection], tuple[Tensor, dict[str, float]]]
    """A minibatch's loss and its statistics (keyed by metric name)."""
    critic: bool
    """Learns a value function: the rollout's explained variance is worth logging."""
    episodic: bool
    """Scores whole episodes: every episode of a rollout starts with it and ends in it."""


def explained_variance(values: Tensor, returns: Tensor) -> float | None:
    """CleanRL's ``1 - Var(returns - values) / Var(returns)``: 1 when the critic predicts the returns,
    0 when it does no better than their mean. None without samples or when the returns do not vary
    (CleanRL's NaN)."""
    if returns.numel() == 0:
        return None
    var_y = returns.var(unbiased=False)
    return float(1 - (returns - values).var(unbiased=False) / var_y) if var_y > 0 else None


def _gae_advantages(rollout: Rollout, args: AlgoSection, next_value: NextValue) -> Tensor:
    """GAE over each segment, bootstrapped from the value of the state after it."""
    bootstrap = next_value()
    advantages = [gae(rollout.rewards[i], rollout.values[i], rollout.dones[i].float(), bootstrap[i],
                      args.gamma, args.gae_lambda)[0] for i in range(len(bootstrap))]
    return torch.stack(advantages)


def _ppo_loss(mb: Minibatch, args: AlgoSection) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate, clipped value loss and entropy bonus; advantages normalised per minibatch
    when ``norm_adv`` (CleanRL's ``mb_advantages``)."""
    mb_advantages = normalize_advantages(mb.advantages) if args.norm_adv else mb.advantages
    return ppo_loss(mb.newlogprob.flatten(), mb.logprobs.flatten(), mb.per_token(mb_advantages),
                    mb.per_token(mb.newvalue), mb.per_token(mb.values), mb.per_token(mb.returns),
                    mb.entropy.flatten(), clip_coef=args.clip_coef, ratio_cap=args.ratio_cap,
                    vf_coef=args.vf_coef, ent_coef=args.ent_coef, proximal_logprob=_flat(mb.proximal_logprob))


def _group_relative_advantages(rollout: Rollout, args: AlgoSection, next_value: NextValue) -> Tensor:
    """Binary success of each episode relative to the ``group_size`` episodes that shared its start
    (neighbouring envs of one segment), the same for every step of the episode."""
    s, t, e = rollout.valid.shape
    scores = (rollout.successes & rollout.valid).any(dim=1).float()  # [S, E]
    arange = torch.arange(max(s, e), device=scores.device)
    group_ids = (arange[:s, None] * e + arange[None, :e]) // args.group_size
    advantages = group_relative_advantages(scores.reshape(-1), group_ids.reshape(-1)).reshape(s, 1, e)
    return advantages.expand(s, t, e)


def _grpo_loss(mb: Minibatch, args: AlgoSection) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate and entropy bonus on the group-relative advantages (already
    standardised within each group, so ``norm_adv`` does not apply); no critic."""
    return grpo_loss(mb.newlogprob.flatten(), mb.logprobs.flatten(), mb.per_token(mb.advantages),
                     mb.entropy.flatten(), clip_coef=args.clip_coef, ratio_cap=args.ratio_cap,
                     ent_coef=args.ent_coef, proximal_logprob=_flat(mb.proximal_logprob))


def _flat(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.flatten()


def _bc_loss(mb: Minibatch, args: AlgoSection) -> tuple[Tensor, dict[str, float]]:
    """The demonstrated tokens' cross-entropy (the minibatch holds demonstrations, not a rollout)."""
    return bc_loss(mb.newlogprob, mb.entropy, ent_coef=args.ent_coef)


PPO = Algorithm("ppo", advantages=_gae_advantages, loss=_ppo_loss, critic=True, episodic=False)
GRPO = Algorithm("grpo", advantages=_group_relative_advantages, loss=_grpo_loss, critic=False, episodic=True)

BC = Algorithm("bc", advantages=None, loss=_bc_loss, critic=False, episodic=False)

ALGORITHMS = {a.name: a for a in (PPO, GRPO, BC)}
"""Every algorithm by its ``algo.name``."""
