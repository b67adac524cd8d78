"""Env registry: build an env by name, so a job file can say ``env = "reach"``.

Why factories with lazy imports: importing :mod:`dvlad.envs` must not import MuJoCo,
because MuJoCo fixes its OpenGL backend at import time and the backend has to be
chosen first (:func:`dvlad.envs.gl.configure_mujoco_gl`), in the worker process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from dvlad.envs.base import Env
from dvlad.envs.gl import configure_mujoco_gl


def _reach(**kwargs: Any) -> Env:
    configure_mujoco_gl()
    from dvlad.envs.reach import ReachEnv

    return ReachEnv(**kwargs)


def _synthetic(**kwargs: Any) -> Env:
    from dvlad.envs.synthetic import SyntheticEnv

    return SyntheticEnv(**kwargs)


ENV_FACTORIES: dict[str, Callable[..., Env]] = {"reach": _reach, "synthetic": _synthetic}


def make_env(name: str, **kwargs: Any) -> Env:
    """Build a registered env, or a user one named ``"package.module:factory"``.

    A user factory may build a MuJoCo env, so the GL backend is configured first for it too.
    """
    if name in ENV_FACTORIES:
        return ENV_FACTORIES[name](**kwargs)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        configure_mujoco_gl()
        factory = getattr(importlib.import_module(module_name), attr)
        return factory(**kwargs)
    known = ", ".join(sorted(ENV_FACTORIES))
    raise ValueError(f"unknown env {name!r}; known envs: {known} (or 'package.module:factory')")
