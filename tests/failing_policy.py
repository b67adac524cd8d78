"""A user policy factory whose learner side breaks mid-run, to test that a dead lane fails the job."""

from __future__ import annotations

from dvlad.policies.tiny_vla import TinyVLA


class _BreaksWhenLearning(TinyVLA):
    def evaluate(self, obs, tokens):
        raise RuntimeError("boom: the learner's loss could not be computed")


def make(env_spec, action_chunk: int = 1, **args) -> TinyVLA:
    return _BreaksWhenLearning(env_spec, action_chunk=action_chunk, **args)
