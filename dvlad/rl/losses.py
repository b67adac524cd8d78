"""PPO and GRPO losses over one minibatch, written like CleanRL's ``ppo_continuous_action.py``.

The maths reads top to bottom with the same intermediate names (``logratio``, ``ratio``,
``pg_loss1``, ``pg_loss2``, ``v_loss_unclipped``, ``v_clipped``, ``v_loss_clipped``, ...) and the
returned stats carry those names, so a curve in ``dvla top`` maps to one line here.

Two differences from CleanRL, both due to asynchrony:

* The ratio is taken against the *behaviour* log-prob, recorded by the actor when the action was
  sampled, not against a log-prob recomputed at the start of the update. Under the async lanes
  the acting weights may be several versions behind the learner, so the ratio can start far from
  1 before any gradient step; :func:`clipped_surrogate` truncates it with the dual clip.
* Per-sample tensors may come with a ``mask`` of valid samples (padding of ragged segments).
  Masked entries are replaced by neutral zeros *before* any arithmetic, so NaN/inf padding can
  change neither the loss nor the gradient. Without a mask every sample counts (the learner
  passes none: it trains on the valid rows only).

All per-sample tensors are [B]. Stats are plain floats, read from the device in one transfer, keyed
by their metric names (:mod:`dvla.metric_names`), which are CleanRL's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dvla import metric_names as m


def clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_coef: float, ratio_cap: float) -> Tensor:
    """Per-sample PPO clipped surrogate loss with dual-clip truncation (Ye et al. 2020).

    Standard PPO clip (Schulman et al. 2017), as a loss to minimise::

        pg_loss1 = -A * ratio
        pg_loss2 = -A * clamp(ratio, 1 - clip_coef, 1 + clip_coef)
        pg_loss_clip = max(pg_loss1, pg_loss2)

    For A > 0 the clip bounds everything: past 1 + eps the loss is flat. For A < 0 it does not:
    the pessimistic ``max`` picks ``-A * ratio``, which grows without bound in the ratio. Here the
    ratio is ``pi_new(a|s) / pi_behaviour(a|s)`` against the log-prob recorded when the action was
    taken, and under asynchrony the behaviour policy may be several versions old, so a stale
    sample whose action the current policy now strongly prefers can have ratio 10 or 100 and a
    negative advantage; one such sample would dominate the minibatch gradient. The dual clip caps
    the importance weight at ``ratio_cap`` (c > 1) for negative advantages::

        pg_loss3 = -A * ratio_cap
        loss = min(pg_loss_clip, pg_loss3)   where A < 0, else pg_loss_clip

    Where the cap is active the loss is constant, so the sample contributes no gradient: a
    truncated importance weight rather than a huge one.

    Args:
        ratio: [B] importance ratio ``exp(new_logprob - behaviour_logprob)``.
        advantages: [B] advantage estimates (not differentiated through).
        clip_coef: PPO epsilon, >= 0.
        ratio_cap: dual-clip c, > 1 (``math.inf`` disables the cap).

    Returns:
        [B] per-sample loss; reduce it with the caller's mask.
    """
    per_sample_loss, _ = _dual_clip_surrogate(ratio, advantages, clip_coef, ratio_cap)
    return per_sample_loss


def _dual_clip_surrogate(
    ratio: Tensor, advantages: Tensor, clip_coef: float, ratio_cap: float
) -> tuple[Tensor, Tensor]:
    """The surrogate of :func:`clipped_surrogate`, plus a [B] bool of where the cap was active."""
    if clip_coef < 0:
        raise ValueError(f"clip_coef must be >= 0; got {clip_coef}")
    if not ratio_cap > 1:
        raise ValueError(f"ratio_cap must be > 1 (dual clip needs c > 1); got {ratio_cap}")
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss_clip = torch.max(pg_loss1, pg_loss2)
    pg_loss3 = -advantages * ratio_cap
    negative_advantage = advantages < 0
    truncated = negative_advantage & (pg_loss3 < pg_loss_clip)
    pg_loss = torch.where(negative_advantage, torch.min(pg_loss_clip, pg_loss3), pg_loss_clip)
    return pg_loss, truncated


def ppo_loss(
    new_logprob: Tensor,
    behaviour_logprob: Tensor,
    advantages: Tensor,
    new_value: Tensor,
    old_value: Tensor,
    returns: Tensor,
    entropy: Tensor,
    mask: Tensor | None = None,
    *,
    clip_coef: float,
    ratio_cap: float,
    vf_coef: float,
    ent_coef: float,
    clip_vloss: bool = True,
    proximal_logprob: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO loss for one minibatch: dual-clipped policy surrogate, (clipped) value loss, entropy bonus.

    ``loss = pg_loss - ent_coef * entropy_loss + vf_coef * v_loss``, every term a masked mean
    ``sum(x * mask) / max(sum(mask), 1)``. Advantages are used as given; normalise them first with
    :func:`normalize_advantages` if wanted (CleanRL's ``norm_adv``).

    The value loss is clipped as in CleanRL: the new value may not move the loss in its favour by
    more than ``clip_coef`` away from the value recorded with the sample (``old_value``), which
    keeps the critic from chasing a single noisy return.

    Args:
        new_logprob: [B] log pi_new(a|s), differentiable.
        behaviour_logprob: [B] log-prob recorded by the actor when it sampled a.
        advantages: [B] advantages (e.g. from :func:`dvlad.rl.gae`).
        new_value: [B] V_new(s), differentiable.
        old_value: [B] V(s) recorded with the sample (the one GAE used).
        returns: [B] critic targets (advantages + old values).
        entropy: [B] policy entropy at s, differentiable.
        mask: [B] bool or float, nonzero for valid samples (float values weight them); None: all
            B samples are valid (B >= 1).
        clip_coef: PPO epsilon for both the ratio and the value clip.
        ratio_cap: dual-clip cap on the importance weight for negative advantages, > 1.
        vf_coef: weight of the value loss.
        ent_coef: weight of the entropy bonus.
        clip_vloss: clip the value loss as CleanRL does; plain 0.5 * MSE otherwise.
        proximal_logprob: [B] log-prob under the weights at the start of this update; given, the
            surrogate is decoupled (see :func:`_policy_loss`).

    Returns:
        ``(loss, stats)``; stats: loss, pg_loss, v_loss, entropy, approx_kl, clipfrac, ratio_mean,
        ratio_max, truncated_frac (0.0 for all of them when no sample is valid).
    """
    weight, (new_logprob, behaviour_logprob, advantages, new_value, old_value, returns, entropy) = (
        _apply_mask(mask, new_logprob, behaviour_logprob, advantages, new_value, old_value, returns, entropy)
    )

    # Policy loss
    pg_loss, entropy_loss, stats = _policy_loss(
        new_logprob, behaviour_logprob, advantages, entropy, weight, clip_coef, ratio_cap,
        proximal_logprob,
    )

    # Value loss
    v_loss_unclipped = (new_value - returns) ** 2
    if clip_vloss:
        v_clipped = old_value + torch.clamp(new_value - old_value, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
        v_loss = 0.5 * _masked_mean(v_loss_max, weight)
    else:
        v_loss = 0.5 * _masked_mean(v_loss_unclipped, weight)

    loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
    return loss, _to_floats({m.LOSS: loss, **stats, m.V_LOSS: v_loss})


def grpo_loss(
    new_logprob: Tensor,
    behaviour_logprob: Tensor,
    advantages: Tensor,
    entropy: Tensor,
    mask: Tensor | None = None,
    *,
    clip_coef: float,
    ratio_cap: float,
    ent_coef: float,
    proximal_logprob: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss for one minibatch: the same dual-clipped surrogate as PPO, with no critic.

    ``loss = pg_loss - ent_coef * entropy_loss``; the baseline is in the advantages, which come from
    :func:`dvlad.rl.group_relative_advantages`. No KL-to-reference term: the clip and the dual
    clip are the trust region.

    Args:
        new_logprob: [B] log pi_new(a|s), differentiable.
        behaviour_logprob: [B] log-prob recorded by the actor when it sampled a.
        advantages: [B] group-relative advantages, one per sample (a rollout's advantage broadcast
            to each of its steps/tokens by the caller).
        entropy: [B] policy entropy, differentiable.
        mask: [B] bool or float, nonzero for valid samples; None: all are (B >= 1).
        clip_coef: PPO epsilon.
        ratio_cap: dual-clip cap, > 1.
        ent_coef: weight of the entropy bonus.
        proximal_logprob: as for :func:`ppo_loss`.

    Returns:
        ``(loss, stats)``; stats: loss, pg_loss, entropy, approx_kl, clipfrac, ratio_mean,
        ratio_max, truncated_frac.
    """
    weight, (new_logprob, behaviour_logprob, advantages, entropy) = _apply_mask(
        mask, new_logprob, behaviour_logprob, advantages, entropy
    )
    pg_loss, entropy_loss, stats = _policy_loss(
        new_logprob, behaviour_logprob, advantages, entropy, weight, clip_coef, ratio_cap,
        proximal_logprob,
    )
    loss = pg_loss - ent_coef * entropy_loss
    return loss, _to_floats({m.LOSS: loss, **stats})


def normalize_advantages(adv: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Standardise advantages over the valid samples: ``(adv - mean) / (std + eps)``.

    Mean and std are masked (padding must not shift them) and the std is the population one, so a
    minibatch with a single valid sample gives 0 rather than CleanRL's NaN from ``Tensor.std()``.
    Masked-out entries come back as 0, so they are inert even where a caller forgets the mask.

    Args:
        adv: [B] advantages.
        mask: [B] bool or float, nonzero for valid samples (float values weight them); None: all
            B samples are valid (B >= 1).
        eps: keeps a constant minibatch finite.

    Returns:
        [B] normalised advantages, not differentiable.
    """
    weight, (adv,) = _apply_mask(mask, adv.detach())
    mean = _masked_mean(adv, weight)
    var = _masked_mean((adv - mean) ** 2, weight)
    normalized = (adv - mean) / (var.sqrt() + eps)
    return normalized if weight is None else torch.where(weight != 0, normalized, torch.zeros_like(normalized))


def _policy_loss(
    new_logprob: Tensor,
    behaviour_logprob: Tensor,
    advantages: Tensor,
    entropy: Tensor,
    weight: Tensor | None,
    clip_coef: float,
    ratio_cap: float,
    proximal_logprob: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The policy half shared by PPO and GRPO: returns ``(pg_loss, entropy_loss, stats)``.

    With ``proximal_logprob`` the surrogate is *decoupled* (Hilton et al. 2022, "Batch
    size-invariance for policy optimization"; AReaL uses it for asynchronous RL): the ratio is
    taken against the proximal policy (the learner's weights when this update began), so the
    trust region sits around where the learner is, and each sample's loss is weighted by
    ``behaviour_weight = min(pi_prox / pi_behaviour, ratio_cap)``, the truncated importance
    weight that corrects for the sample's staleness. Without staleness the weight is 1 and the
    loss is the plain one.
    """
    if proximal_logprob is not None:
        proximal_logprob = _masked(weight, proximal_logprob)
    anchor = behaviour_logprob if proximal_logprob is None else proximal_logprob
    logratio = new_logprob - anchor
    ratio = logratio.exp()

    with torch.no_grad():
        # http://joschu.net/blog/kl-approx.html : unbiased, always >= 0, 0 when the policies agree.
        approx_kl = _masked_mean((ratio - 1) - logratio, weight)
        clipfrac = _masked_mean(((ratio - 1.0).abs() > clip_coef).to(new_logprob.dtype), weight)
        ratio_mean = _masked_mean(ratio, weight)
        # ratio > 0, so a 0 for masked entries (and a 0 appended for an empty batch) never wins.
        ratio_max = F.pad(_masked(weight, ratio), (0, 1)).max()

    pg_loss_per_sample, truncated = _dual_clip_surrogate(ratio, advantages, clip_coef, ratio_cap)
    if proximal_logprob is not None:
        behaviour_weight = (proximal_logprob - behaviour_logprob).exp().clamp(max=ratio_cap)
        pg_loss_per_sample = behaviour_weight.detach() * pg_loss_per_sample
    pg_loss = _masked_mean(pg_loss_per_sample, weight)
    truncated_frac = _masked_mean(truncated.to(new_logprob.dtype), weight)
    entropy_loss = _masked_mean(entropy, weight)

    stats = {
        m.PG_LOSS: pg_loss,
        m.ENTROPY: entropy_loss,
        m.APPROX_KL: approx_kl,
        m.CLIPFRAC: clipfrac,
        m.RATIO_MEAN: ratio_mean,
        m.RATIO_MAX: ratio_max,
        m.TRUNCATED_FRAC: truncated_frac,
    }
    return pg_loss, entropy_loss, stats


def _apply_mask(mask: Tensor | None, *tensors: Tensor) -> tuple[Tensor | None, tuple[Tensor, ...]]:
    """Check shapes; return the mask as float weights and each tensor with masked entries zeroed
    (no mask: None and the tensors as they are).

    ``torch.where`` (not multiplication) so NaN/inf padding is dropped in the forward pass, and its
    backward sends exactly 0 to the dropped entries, so they cannot poison shared parameters.
    """
    shape = tensors[0].shape if mask is None else mask.shape
    for t in tensors:
        if t.dim() != 1 or t.shape != shape:
            raise ValueError(
                f"per-sample tensors and mask must all be [B]; got {tuple(t.shape)} "
                f"and {'no mask' if mask is None else f'mask {tuple(shape)}'}"
            )
    if mask is None:
        return None, tensors
    dtype = tensors[0].dtype if tensors[0].is_floating_point() else torch.get_default_dtype()
    weight = mask.to(dtype)
    return weight, tuple(_masked(weight, t) for t in tensors)


def _masked(weight: Tensor | None, x: Tensor) -> Tensor:
    """``x`` with the entries of zero weight zeroed (no weights: ``x``)."""
    return x if weight is None else torch.where(weight != 0, x, torch.zeros_like(x))


def _masked_mean(x: Tensor, weight: Tensor | None) -> Tensor:
    """``sum(x * w) / max(sum(w), 1)``: a mean over valid samples, 0 when there are none (no
    weights: every sample counts)."""
    if weight is None:
        return x.mean()
    return (x * weight).sum() / weight.sum().clamp(min=1.0)


def _to_floats(stats: dict[str, Tensor]) -> dict[str, float]:
    """Detach every stat and read them all with one device-to-host transfer."""
    values = torch.stack([v.detach().to(torch.float64) for v in stats.values()]).tolist()
    return dict(zip(stats, values, strict=True))


def bc_loss(new_logprob: Tensor, entropy: Tensor, *, ent_coef: float) -> tuple[Tensor, dict[str, float]]:
    """Behaviour cloning: the cross-entropy of the demonstrated action tokens (their mean negative
    log-prob under the policy), minus an optional entropy bonus."""
    nll = -new_logprob.mean()
    mean_entropy = entropy.mean()
    loss = nll - ent_coef * mean_entropy
    return loss, {m.LOSS: float(nll.detach()), m.ENTROPY: float(mean_entropy.detach())}
