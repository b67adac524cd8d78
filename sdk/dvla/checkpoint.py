"""Local checkpoints on the client side: which file, which policy made it, readable or not.

Why the SDK reads the header itself: ``train(policy="runs/try1")`` must build a spec whose policy (name,
action chunk, arguments) matches the weights, and a laptop has no torch to ask. A safetensors file
starts with an 8-byte little-endian length and that many bytes of JSON whose ``__metadata__`` holds
the engine's ``spec`` (see ``dvlad/policies/checkpoint.py``), so the standard library suffices.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from dvla.errors import InvalidSpec

CHECKPOINT_NAME = "checkpoint.safetensors"
"""The file a run directory holds its latest checkpoint in (the engine's name)."""
MAX_HEADER = 100 << 20


def _refuse(reason: str) -> InvalidSpec:
    return InvalidSpec(reason, issues=[{"field": "spec.policy.checkpoint", "reason": reason}],
                       code="bad_checkpoint", field="spec.policy.checkpoint", status=None)


def named_checkpoint(path: Path) -> Path:
    """The file a checkpoint path names: a run directory's ``checkpoint.safetensors``, or the file itself."""
    return path / CHECKPOINT_NAME if path.is_dir() else path


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The checkpoint a path names (:func:`named_checkpoint`), absolute, checked readable."""
    path = Path(path).expanduser().absolute()
    file = named_checkpoint(path)
    if not file.is_file():
        raise _refuse(f"{file}: no such checkpoint file" + (" in the directory" if path.is_dir() else ""))
    if not os.access(file, os.R_OK):
        raise _refuse(f"{file}: not readable by this user, who is the one the job runs as")
    return file


def metadata(file: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (its header's ``__metadata__``)."""
    with file.open("rb") as f:
        raw = f.read(8)
        (length,) = struct.unpack("<Q", raw) if len(raw) == 8 else (MAX_HEADER + 1,)
        if length > MAX_HEADER:
            raise _refuse(f"{file}: not a safetensors file")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise _refuse(f"{file}: not a safetensors file (unreadable header)") from None
    return dict(header.get("__metadata__") or {})


def spec_dict(file: Path) -> dict[str, Any]:
    """The job spec (a dict of sections) that the D-VLA job which wrote ``file`` stored in its metadata."""
    try:
        spec = json.loads(metadata(file)["spec"])
    except (KeyError, ValueError):
        spec = None
    if not isinstance(spec, dict) or not isinstance(spec.get("policy"), dict):
        raise _refuse(f"{file}: has no D-VLA job spec in its metadata (not written by a D-VLA job)")
    return spec


def policy_of(file: Path) -> dict[str, Any]:
    """The ``[policy]`` section of the job that wrote ``file``, pointing at it (``checkpoint`` set)."""
    policy = spec_dict(file)["policy"]
    return {"name": policy["name"], "action_chunk": policy["action_chunk"], "args": policy["args"],
            "checkpoint": str(file)}
