"""VLA policies and the factory the job runner builds them with.

Why a factory by name: a job spec names its policy as a string (``PolicySection.name``),
either a built-in or ``"package.module:function"`` for a user's own model, so the
engine never hard-codes a model class. Built-ins are imported lazily: importing this
package stays cheap for code that only needs the interface.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from dvla.spec import JobSpec
from dvlad.policies.base import ActOutput, EvalOutput, ObsBatch, Policy, flatten_parameters
from dvlad.sharing import base as shared
from dvlad.spaces import EnvSpec

__all__ = [
    "BUILTIN_POLICIES",
    "ActOutput",
    "EvalOutput",
    "ObsBatch",
    "Policy",
    "build_policy",
    "flatten_parameters",
    "make_policy",
]

BUILTIN_POLICIES: dict[str, str] = {
    "tiny-vla": "dvlad.policies.tiny_vla:TinyVLA",
    "transformer-vla": "dvlad.policies.transformer_vla:TransformerVLA",
    "hf-vla": "dvlad.policies.hf_vla:HFVLA",
}
"""Built-in name -> ``module:attribute`` of its factory."""


def _import_factory(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"policy factory {target!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import policy module {module_name!r}: {exc}") from exc
    try:
        factory = getattr(module, attr)
    except AttributeError as exc:
        raise ValueError(f"module {module_name!r} has no policy factory {attr!r}") from exc
    if not callable(factory):
        raise TypeError(f"policy factory {target!r} is not callable")
    return factory


def make_policy(name: str, env_spec: EnvSpec, action_chunk: int = 1, **args: Any) -> Policy:
    """Build a policy: a built-in name or ``"package.module:function"``.

    The factory is called as ``factory(env_spec, action_chunk=action_chunk, **args)``
    and must return a :class:`Policy`.
    """
    if name in BUILTIN_POLICIES:
        target = BUILTIN_POLICIES[name]
    elif ":" in name:
        target = name
    else:
        builtins = ", ".join(sorted(BUILTIN_POLICIES))
        raise ValueError(f"unknown policy {name!r}: use a built-in ({builtins}) or 'package.module:function'")
    policy = _import_factory(target)(env_spec, action_chunk=action_chunk, **args)
    if not isinstance(policy, Policy):
        raise TypeError(f"policy factory {target!r} returned {type(policy).__name__}, not a Policy")
    return policy


def build_policy(spec: JobSpec, env_spec: EnvSpec, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[Policy, torch.Tensor]:
    """The job's policy on ``device`` in ``dtype``, its weights in one flat buffer.

    Initialised on ``device`` itself from the job's seed (a 1B model initialises in seconds
    on a GPU, in tens of seconds on one CPU thread), so every process of the job (learner,
    actors) starts from the same weights; then cast to ``dtype``. A job given a shared base
    (``resources.share_base`` under dvlad) maps its trunk's weights instead of making them, and
    leaves them in the holder's dtype (:mod:`dvlad.sharing.base`)."""
    torch.manual_seed(spec.job.seed)
    base = shared.from_environment() if spec.resources.share_base else None
    with torch.device(device), shared.using(base):
        policy = make_policy(spec.policy.name, env_spec, action_chunk=spec.policy.action_chunk,
                             **spec.policy.args)
        shared.cast(policy, device=device, dtype=dtype)
    return policy, flatten_parameters(policy)
