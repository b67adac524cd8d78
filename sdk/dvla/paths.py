"""The paths a job spec names on the client's machine: ``policy.checkpoint`` and the path arguments of
the built-ins (``dvla.catalog.PATH_ARGS``: transformer-vla's ``pretrained``, libero's ``libero_root``).

Why the client resolves them: a job runs in its run directory on the daemon's machine, so a relative
path that reached dvlad would be looked up there, and the job would fail after waiting its turn. A
relative path in a job file is the file's, as in most tools' config files: ``dvla submit``, ``dvla
validate`` and ``Client.submit(path)`` resolve it against the file's folder (a spec given as a dict,
against the current directory, as ``Client.train`` always has), and the daemon refuses any that is
still relative (:func:`relative_paths`). A local checkpoint is checked here; the client references it
on a local daemon (the job runs as this very user) or uploads it to a remote one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dvla import catalog
from dvla.checkpoint import checkpoint_file
from dvla.errors import InvalidSpec
from dvla.spec import JobSpec, SpecError, SpecIssue, key_position, spec_to_dict

CHECKPOINT = "policy.checkpoint"


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


def relative_paths(spec: JobSpec) -> list[SpecIssue]:
    """The daemon's check: a path still relative when it arrives would be looked up in the job's run
    directory, which is never what its writer meant."""
    return [SpecIssue(key, f"a relative path ({value!r}) would be looked up in the job's run directory on the "
                           "daemon's machine: give an absolute path (dvla submit and the SDK resolve a job "
                           "file's relative paths against its folder before sending it)")
            for key, value in _path_keys(spec_to_dict(spec)) if not Path(value).expanduser().is_absolute()]


def resolve(data: Mapping[str, Any], base: Path, *, base_name: str, source: str = "<job>",
            text: str | None = None) -> tuple[dict[str, Any], Path | None]:
    """``data`` (a resolved spec dict) with each relative path made absolute against ``base``, and the
    local checkpoint file if there is one (relative, or absolute and present here; an absolute path
    absent here may be one on the daemon's machine and is left to it).

    A local checkpoint must be a readable D-VLA checkpoint file or run directory; if not, SpecError
    with the key (located in ``text``, the file's TOML, when given). ``base_name`` says what ``base``
    is in messages ("the job file's folder")."""
    out = copy.deepcopy(dict(data))
    local: Path | None = None
    issues = []
    for key, value in _path_keys(out):
        path = Path(value).expanduser()
        relative = not path.is_absolute()
        if relative:
            path = (base / path).absolute()
            _set(out, key, str(path))
        if key != CHECKPOINT or not (relative or path.exists()):
            continue
        try:
            local = checkpoint_file(path)
        except InvalidSpec as err:
            origin = f" (the relative {value!r} is taken from {base_name}, {base})" if relative else ""
            line, column = key_position(text, key) if text is not None else (None, None)
            issues.append(SpecIssue(key, err.reason + origin, line, column, source))
            continue
        _set(out, key, str(local))
    if issues:
        raise SpecError(issues)
    return out, local
