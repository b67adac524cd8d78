"""RL maths for the learner lane: advantage estimators and the PPO / GRPO losses.

Pure torch functions on already-stacked tensors: no processes, no environments, no policies.
Written like CleanRL's ``ppo_continuous_action.py`` (named intermediates, stats with the same
names). Off-policy correction for asynchronous acting is the dual clip in
:func:`clipped_surrogate`: ratios are taken against the behaviour log-prob recorded by the actor,
which may be several weight versions old.
"""

from dvlad.rl.advantages import gae, group_relative_advantages
from dvlad.rl.losses import clipped_surrogate, grpo_loss, normalize_advantages, ppo_loss

__all__ = [
    "clipped_surrogate",
    "gae",
    "group_relative_advantages",
    "grpo_loss",
    "normalize_advantages",
    "ppo_loss",
]
