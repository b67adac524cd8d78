"""Env registry: build an env by name, so a job file can say ``env = "reach"``.

Why factories with lazy imports: importing :mod:`dvlad.envs` must not import MuJoCo,
because MuJoCo fixes its OpenGL backend at import time and the backend has to be
chosen first (:func:`dvlad.envs.gl.configure_mujoco_gl`), in the worker process.

Why ``env_index``: a job's envs are built from one ``env.args`` table, yet some envs must
differ by slot (LIBERO spreads a suite's tasks over them). A factory that declares an
``env_index`` parameter is told its slot's index by the worker pool; others never see it.
"""

from __future__ import annotations

import importlib
import inspect
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


def _libero(env_index: int = 0, **kwargs: Any) -> Env:
    from dvlad.envs.libero import LiberoEnv  # configures GL and LIBERO's files before importing them

    return LiberoEnv(env_index=env_index, **kwargs)


ENV_FACTORIES: dict[str, Callable[..., Env]] = {"reach": _reach, "synthetic": _synthetic, "libero": _libero}


def make_env(name: str, *, env_index: int | None = None, **kwargs: Any) -> Env:
    """Build a registered env, or a user one named ``"package.module:factory"``.

    ``env_index`` goes to factories that declare that parameter (see the module docstring).
    A user factory may build a MuJoCo env, so the GL backend is configured first for it too.
    """
    if name in ENV_FACTORIES:
        factory = ENV_FACTORIES[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        configure_mujoco_gl()
        factory = getattr(importlib.import_module(module_name), attr)
    else:
        known = ", ".join(sorted(ENV_FACTORIES))
        raise ValueError(f"unknown env {name!r}; known envs: {known} (or 'package.module:factory')")
    if env_index is not None and "env_index" in inspect.signature(factory).parameters:
        kwargs["env_index"] = env_index
    return factory(**kwargs)
