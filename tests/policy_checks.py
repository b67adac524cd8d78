"""The checks every VLA policy's act/evaluate/value must pass, shared by the policies' tests."""

from __future__ import annotations

import torch

from dvlad.policies import ActOutput, EvalOutput, ObsBatch, Policy
from dvlad.spaces import ACTION_DIM


def act_evaluate_value(policy: Policy, obs: ObsBatch, chunk: int, aux_dim: int,
                       bins: int = 256) -> tuple[ActOutput, EvalOutput]:
    """Act, evaluate what was sampled and value ``obs``, asserting the interface's shapes and dtypes,
    actions in [-1, 1], and that the learner's log-probs and values are the actor's."""
    batch = obs.proprio.shape[0]
    with torch.no_grad():
        out = policy.act(obs)
        ev = policy.evaluate(obs, out.tokens)
        value = policy.value(obs)
    assert out.tokens.shape == out.actions.shape == (batch, chunk, ACTION_DIM)
    assert out.tokens.dtype == torch.int64 and out.tokens.min() >= 0 and out.tokens.max() < bins
    assert out.actions.abs().max() <= 1.0
    for t in (out.logprob, ev.logprob, ev.entropy):
        assert t.shape == (batch, chunk * ACTION_DIM) and t.dtype == torch.float32
    for t in (out.value, ev.value, value):
        assert t.shape == (batch,) and t.dtype == torch.float32
    assert ev.aux is not None and ev.aux.shape == (batch, aux_dim)
    torch.testing.assert_close(ev.logprob, out.logprob, rtol=0, atol=1e-5)  # the behaviour log-prob is the learner's
    torch.testing.assert_close(ev.value, value, rtol=0, atol=1e-5)
    return out, ev
