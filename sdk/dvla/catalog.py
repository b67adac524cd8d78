"""The engine's built-in names as plain data: the envs and policies a job may name without a
``"package.module:function"``, and the episode limit each built-in env runs with.

Why here, in the light client package: ``dvla validate`` must refuse what the engine is certain to
refuse (an unknown name such as ``"tiny_vla"``, a GRPO segment shorter than the env's episode, a
misspelt ``[policy.args]`` key that would end the job with a TypeError after it waited in the queue)
on a laptop without torch. The engine registers its factories under these names and takes its
default limits from here; tests check its registries and its constructors' signatures against this
module, so there is one list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

POLICIES: tuple[str, ...] = ("tiny-vla", "transformer-vla", "hf-vla")
"""Built-in policy names (``dvlad.policies.BUILTIN_POLICIES`` maps each to its class)."""
POLICY_ARGS: dict[str, tuple[str, ...]] = {
    "tiny-vla": ("d_model", "layers", "heads", "patch_grid", "vocab_size", "max_instruction_tokens", "bins",
                 "initial_std"),
    "transformer-vla": ("preset", "trunk", "pretrained", "lora", "dtype", "patch_size", "vision_mlp",
                        "max_instruction_tokens", "vocab_size", "bins"),
    "hf-vla": ("pretrained", "head", "trust_remote_code", "lora", "dtype", "image_prompt", "max_instruction_tokens",
               "bins"),
}
"""The ``[policy.args]`` each built-in policy takes: its constructor's keyword arguments but those the
engine passes itself (``env_spec``; ``action_chunk``, which is ``policy.action_chunk``)."""
REQUIRED_ARGS: dict[str, dict[str, str]] = {
    "hf-vla": {"pretrained": "the local Hugging Face checkpoint directory it builds on"},
}
"""The ``args`` a built-in policy or env cannot run without, and what each is: without it the job would wait its
turn in the queue, then fail (hf-vla has nothing to build on)."""
POLICY_ARG_TYPES: dict[str, dict[str, Any]] = {
    "hf-vla": {"pretrained": str, "head": Literal["parallel", "tokens"], "trust_remote_code": bool,
               "image_prompt": str},
}
"""Types of the ``[policy.args]`` that ``dvla validate`` checks before a job waits its turn: those whose
wrong value would fail late, or worse (``trust_remote_code = "false"`` is a true string: it must be a
boolean, since it decides whether a checkpoint's own code runs)."""
LIBERO_SUITES: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
"""LIBERO's suites and their customary episode limits (policy steps, settle steps not counted)."""
DEFAULT_LIBERO_SUITE = "libero_spatial"
EPISODE_LIMITS: dict[str, int] = {"reach": 40, "synthetic": 220}
"""The own episode limit of each built-in env but LIBERO (whose limit is its suite's)."""
ENVS: tuple[str, ...] = (*EPISODE_LIMITS, "libero")
"""Built-in env names (``dvlad.envs.ENV_FACTORIES`` maps each to its factory)."""
ENV_ARGS: dict[str, tuple[str, ...]] = {
    "reach": ("num_objects", "image_size", "max_episode_steps", "max_delta", "touch_radius", "start_height", "seed"),
    "synthetic": ("step_ms", "image_size", "cameras", "proprio_dim", "max_episode_steps", "seed"),
    "libero": ("suite", "task", "tasks", "image_size", "cameras", "max_episode_steps", "settle_steps",
               "fast_render", "libero_root", "seed"),
}
"""The ``[env.args]`` each built-in env takes: its constructor's keyword arguments but ``env_index``, which
the engine passes to each env itself."""
PATH_ARGS: dict[str, tuple[str, ...]] = {"transformer-vla": ("pretrained",), "hf-vla": ("pretrained",),
                                         "libero": ("libero_root",)}
"""The arguments of a built-in policy or env (above) that name a file or directory: like
``policy.checkpoint``, a relative one is the job file's and is resolved before the spec is sent."""


def episode_limit(env: str, args: Mapping[str, Any]) -> int | None:
    """The episode limit built-in ``env`` runs with, given its ``env.args``: their
    ``max_episode_steps`` when set, else the env's own (LIBERO: its suite's). None where it cannot
    be known here: a user's env, or a suite LIBERO does not have (the engine names that one)."""
    if env not in ENVS:
        return None
    own = args.get("max_episode_steps")
    if isinstance(own, int) and not isinstance(own, bool) and own > 0:
        return own
    if env == "libero":
        suite = args.get("suite", DEFAULT_LIBERO_SUITE)
        return LIBERO_SUITES.get(suite) if isinstance(suite, str) else None
    return EPISODE_LIMITS[env]
