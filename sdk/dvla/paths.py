"""The paths a job spec names: ``policy.checkpoint``, ``algo.demonstrations`` and the path arguments of
the built-ins (``dvla.catalog.PATH_ARGS``: transformer-vla's and hf-vla's ``pretrained``, libero's
``libero_root``), checked by one function, :func:`check`, on both sides (:mod:`dvla.admission`).

Why the client resolves them: a job runs in its run directory on the daemon's machine, so a relative
path that reached dvlad would be looked up there, and the job would fail after waiting its turn. A
relative path in a job file is the file's, as in most tools' config files: ``dvla submit``, ``dvla
validate`` and ``Client.submit(path)`` resolve it against the file's folder (a spec given as a dict,
against the current directory, as ``Client.train`` always has), and the daemon refuses any that is
still relative. Each path that is here is checked here (a missing one failed the job only once it ran);
the client references a local checkpoint on a local daemon (the job runs as this very user) or uploads
it to a remote one.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dvla import catalog
from dvla.checkpoint import checkpoint_file
from dvla.errors import InvalidSpec
from dvla.spec import SpecError, SpecIssue, key_position

CHECKPOINT = "policy.checkpoint"
MAY_BE_A_FILE = frozenset({"algo.demonstrations"})
"""Paths that may name a file (demonstrations: an HDF5 file, or a folder of them); the path arguments
of the built-ins name directories (a model's, a LIBERO data root), and the checkpoint is checked as one
(:func:`dvla.checkpoint.checkpoint_file`)."""


def _path_keys(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(dotted key, value)`` of each path the resolved spec ``data`` sets."""
    policy, env = data.get("policy", {}), data.get("env", {})
    if policy.get("checkpoint"):
        yield CHECKPOINT, policy["checkpoint"]
    demonstrations = data.get("algo", {}).get("demonstrations")
    if isinstance(demonstrations, str) and demonstrations:
        yield "algo.demonstrations", demonstrations
    for section, owner in (("policy", policy), ("env", env)):
        for arg in catalog.PATH_ARGS.get(owner.get("name", ""), ()):
            value = owner.get("args", {}).get(arg)
            if isinstance(value, str) and value:
                yield f"{section}.args.{arg}", value


def _set(data: dict[str, Any], key: str, value: str) -> None:
    *parents, last = key.split(".")
    for name in parents:
        data = data[name]
    data[last] = value


def check(data: Mapping[str, Any], base: Path | None = None, *, base_name: str = "", source: str = "<job>",
          text: str | None = None) -> tuple[dict[str, Any], Path | None]:
    """``data`` (a resolved spec dict) with each path absolute, and the local checkpoint file if it names one.

    With ``base`` (a client: a job file's folder, or the current directory; ``base_name`` says which in
    messages), a relative path is taken from there and must exist; an absolute one is checked if it is
    here (absent, it may be one on the daemon's machine, left to the job). Each checked path must be
    what it names: a readable D-VLA checkpoint file or run directory, a model or data directory,
    demonstrations as a file or folder. Without ``base`` (dvlad at submit) a path still relative is
    refused, since the job would look it up in its run directory, and no file is looked at: dvlad may
    run as root for every user, so what it can see says nothing of what the job's user can.

    Raises SpecError with every problem's key (located in ``text``, the file's TOML, when given)."""
    out = copy.deepcopy(dict(data))
    local: Path | None = None
    issues = []
    for key, value in _path_keys(out):
        path = Path(value).expanduser()
        relative = not path.is_absolute()
        reason = None
        if base is None:
            if relative:
                reason = (f"a relative path ({value!r}) would be looked up in the job's run directory on the "
                          "daemon's machine: give an absolute path (dvla submit and the SDK resolve a job "
                          "file's relative paths against its folder before sending it)")
        else:
            if relative:
                path = (base / path).absolute()
                _set(out, key, str(path))
            if relative or path.exists():
                reason, file = _check_local(key, path)
                if key == CHECKPOINT and file is not None:
                    local = file
                    _set(out, key, str(file))
                if reason and relative:
                    reason += f" (the relative {value!r} is taken from {base_name}, {base})"
        if reason:
            line, column = key_position(text, key) if text is not None else (None, None)
            issues.append(SpecIssue(key, reason, line, column, source))
    if issues:
        raise SpecError(issues)
    return out, local


def _check_local(key: str, path: Path) -> tuple[str | None, Path | None]:
    """Why ``path`` (of ``key``, here) cannot serve, or None; and the checkpoint file it names."""
    if key == CHECKPOINT:
        try:
            return None, checkpoint_file(path)
        except InvalidSpec as err:
            return err.reason, None
    if not path.exists():
        return f"{path}: no such file or directory", None
    if key not in MAY_BE_A_FILE and not path.is_dir():
        return f"{path}: not a directory", None
    if not os.access(path, os.R_OK):
        return f"{path}: not readable by this user, who is the one the job runs as", None
    return None, None
