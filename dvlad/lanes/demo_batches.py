"""The demonstrations a behaviour-cloning learner trains on, as the policy takes them.

Why in the learn lane: ``algo.name = "bc"`` runs the same job as PPO (env workers and the actor keep
acting, so the success rate is measured as the policy learns), but its learner trains on rows drawn
from demonstrations (:mod:`dvlad.demos`) instead of the rollout: :meth:`DemoBatches.rows` is the bc
learner's source of :class:`~dvlad.rl.TrainingRows`, as the scored rollout is PPO's and GRPO's. They
are read, tokenized with the policy's own instruction tokenizer and action bins once, and held on the
host.
"""

from __future__ import annotations

import torch

from dvlad.demos import read_demonstrations
from dvlad.policies.action_tokens import ActionTokenizer
from dvlad.policies.base import Policy
from dvlad.rl import TrainingRows
from dvlad.spaces import EnvSpec, image_key


class DemoBatches:
    """Every demonstrated step as the named arrays of a learner's batch, and draws of them."""

    def __init__(self, path: str, env_spec: EnvSpec, policy: Policy, device: torch.device, seed: int = 0) -> None:
        demos = read_demonstrations(path, env_spec, policy.action_chunk)
        unique = sorted(set(demos.instructions))
        ids = policy.tokenize(unique)
        row = {text: i for i, text in enumerate(unique)}
        tokenizer = getattr(policy, "action_tokenizer", None) or ActionTokenizer()
        self.device = device
        self.obs = {image_key(c): torch.from_numpy(frames.copy()) for c, frames in demos.images.items()}
        self.obs["proprio"] = torch.from_numpy(demos.proprio)
        self.obs["instruction"] = ids[torch.tensor([row[t] for t in demos.instructions])]
        self.tokens = tokenizer.encode(torch.from_numpy(demos.actions))
        """int64 N×K×7: the demonstrated actions in the policy's bins."""
        self.aux = None if demos.aux is None else torch.from_numpy(demos.aux)
        """float32 N×A: the env's auxiliary labels, where the demonstrations hold them."""
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.tokens)

    def sample(self, n: int) -> TrainingRows:
        """``n`` rows drawn uniformly (with replacement), on the learner's device."""
        rows = torch.randint(len(self), (n,), generator=self._generator)
        tokens = self.tokens[rows].to(self.device)
        zeros = torch.zeros(n, device=self.device)
        return TrainingRows(obs={k: v[rows].to(self.device) for k, v in self.obs.items()}, actions=tokens,
                            logprobs=torch.zeros(n, tokens[0].numel(), device=self.device),
                            advantages=zeros, values=zeros,
                            aux=None if self.aux is None else self.aux[rows].to(self.device),
                            inds=torch.arange(n, device=self.device))

    def rows(self, rollout: dict[str, torch.Tensor]) -> TrainingRows:
        """As many demonstrated rows as ``rollout`` holds valid steps: the rollout measured the policy,
        the update learns from demonstrations at the pace it would have learned from the rollout."""
        return self.sample(int(rollout["valid"].sum()))
