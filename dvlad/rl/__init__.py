"""RL maths for the learner lane: advantage estimators, the PPO / GRPO losses, and the algorithms
built from them.

Pure torch functions on already-stacked tensors: no processes, no environments, no policies.
Written like CleanRL's ``ppo_continuous_action.py`` (named intermediates, stats with the same
names). Off-policy correction for asynchronous acting is the dual clip in
:func:`clipped_surrogate`: ratios are taken against the behaviour log-prob recorded by the actor,
which may be several weight versions old.
"""

from dvlad.rl.advantages import gae, group_relative_advantages
from dvlad.rl.algorithms import ALGORITHMS, Algorithm, Minibatch, Rollout, TrainingRows, explained_variance
from dvlad.rl.losses import clipped_surrogate, grpo_loss, normalize_advantages, ppo_loss

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Minibatch",
    "Rollout",
    "TrainingRows",
    "clipped_surrogate",
    "explained_variance",
    "gae",
    "group_relative_advantages",
    "grpo_loss",
    "normalize_advantages",
    "ppo_loss",
]
