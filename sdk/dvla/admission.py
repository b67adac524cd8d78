"""The checks a job spec passes before anything runs it, defined once.

``dvla validate``, ``dvla submit`` and the SDK (before sending), the job runner run by hand (``python -m
dvlad.runtime.job FILE``) and dvlad (at submit) all call :func:`admit` (a TOML file: :func:`admit_file`),
so that a spec one accepts the others accept: ``dvla validate`` once said ``ok`` to a spec dvlad refused
(an integer beyond 64 bits) or to one whose job then failed (a ``pretrained`` directory that was not
there). What is checked: the schema (:mod:`dvla.spec`: every key's type and range, every count's upper
bound, the arguments a built-in takes and needs) and the paths (:mod:`dvla.paths`: relative ones taken
from the file's folder where there is one, each that is here checked; dvlad refuses one still relative).
What only dvlad can tell, it checks after: whether the job fits its node (GPUs, CPU slots, memory).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dvla import paths
from dvla.spec import JobSpec, load_spec, spec_from_dict, spec_to_dict


def admit(data: Mapping[str, Any], base: Path | None = None, *, base_name: str = "the current directory",
          source: str = "<job>") -> tuple[JobSpec, Path | None]:
    """The spec ``data`` (decoded JSON or msgpack, a dict) with its paths absolute, and its local
    checkpoint file if it names one here. ``base``: where relative paths are taken from (None: dvlad,
    which refuses them). Raises :class:`~dvla.spec.SpecError` with every problem."""
    return _with_paths(spec_from_dict(dict(data), source), base, base_name, source, None)


def admit_file(path: str | os.PathLike[str]) -> tuple[JobSpec, Path | None]:
    """:func:`admit` for a TOML job file: its relative paths are its folder's, and each problem has its line."""
    file = Path(path)
    spec = load_spec(file)  # reads the file: its key positions locate the paths' problems
    return _with_paths(spec, file.absolute().parent, "the job file's folder", str(file),
                       file.read_text(encoding="utf-8-sig"))


def _with_paths(spec: JobSpec, base: Path | None, base_name: str, source: str,
                text: str | None) -> tuple[JobSpec, Path | None]:
    data, local = paths.check(spec_to_dict(spec), base, base_name=base_name, source=source, text=text)
    return spec_from_dict(data, source), local
