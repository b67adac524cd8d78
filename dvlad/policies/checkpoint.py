"""Atomic safetensors checkpoints.

Why atomic: a job killed mid-write (cancel, OOM, power loss) must leave either the
previous checkpoint or the new one, never a torn file that a resume would load. The
bytes go to a temporary file in the same directory (same filesystem, so the rename is
atomic), are fsynced, renamed over the target with ``os.replace``, and the directory is
fsynced so the rename itself survives a crash.

Why safetensors: no pickle (loading cannot run code), memory-mapped loads, and string
metadata in the header. Generic on purpose: the runtime stores the policy's flat
buffer, optimizer state tensors and JSON-encoded metadata through it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` and string ``metadata`` to ``path`` atomically, replacing any old file.

    Tensors are written from CPU copies; they must not share storage with each other
    (safetensors refuses aliases, so pass the flat buffer, not its parameter views).
    """
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"checkpoint metadata must be str -> str, got {key!r}: {type(value).__name__}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; a checkpoint is meant to be read (resume, download)
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint written by :func:`save_checkpoint`: (tensors, metadata)."""
    with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
        metadata = dict(f.metadata() or {})
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    return tensors, metadata


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
