"""Atomic safetensors checkpoints.

Why atomic: a job killed mid-write (cancel, OOM, power loss) must leave either the
previous checkpoint or the new one, never a torn file that a resume would load. The
bytes go to a temporary file in the same directory (same filesystem, so the rename is
atomic), are fsynced, renamed over the target with ``os.replace``, and the directory is
fsynced so the rename itself survives a crash.

Why safetensors: no pickle (loading cannot run code), memory-mapped loads, and string
metadata in the header.

The training checkpoint format (``dvla-checkpoint-1``) is defined here once: the policy's flat
buffer as ``policy.flat``, each optimizer state tensor as ``optim.PARAM.NAME``, and string
metadata with the version, the env steps trained on and the whole job spec as JSON (the SDK reads
the spec back without torch: ``dvla.checkpoint``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dvla.checkpoint import named_checkpoint
from dvla.spec import JobSpec

CHECKPOINT_FORMAT = "dvla-checkpoint-1"


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
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the mode open() would give it
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
    """Read a checkpoint written by :func:`save_checkpoint`: (tensors, metadata). Raises
    :class:`UnreadableCheckpoint` saying which file and why (missing, permission, corrupt)."""
    try:
        with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except FileNotFoundError:
        raise UnreadableCheckpoint(f"checkpoint {path} is missing (no such file)") from None
    except PermissionError:
        raise UnreadableCheckpoint(f"checkpoint {path} is not readable by uid {os.geteuid()}, the user the job "
                                   "runs as (permission denied)") from None
    except OSError as exc:
        raise UnreadableCheckpoint(f"checkpoint {path} could not be read: {exc.strerror or exc}") from None
    except Exception as exc:  # safetensors' own error: a truncated or foreign file
        raise UnreadableCheckpoint(f"checkpoint {path} is corrupt or not a safetensors file ({exc})") from None
    return tensors, metadata


class UnreadableCheckpoint(ValueError):
    """A checkpoint that cannot be read; the message names the file and why (written for people)."""


def save_training_checkpoint(path: Path, flat: torch.Tensor, optimizer: dict[str, Any], *, version: int,
                             trained_env_steps: int, spec: JobSpec) -> None:
    """A learner's state in the training checkpoint format: weights, optimizer state, counters, spec."""
    tensors = {"policy.flat": flat.detach().cpu()}
    for i, st in optimizer["state"].items():
        for name, value in st.items():
            tensors[f"optim.{i}.{name}"] = torch.as_tensor(value).cpu()
    meta = {"format": CHECKPOINT_FORMAT, "version": str(version), "trained_env_steps": str(trained_env_steps),
            "policy": spec.policy.name, "numel": str(flat.numel()), "spec": json.dumps(asdict(spec))}
    save_checkpoint(path, tensors, meta)


def load_weights(flat: torch.Tensor, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Copy the weights of the checkpoint ``path`` names (:func:`dvla.checkpoint.named_checkpoint`)
    into a policy's flat buffer; returns all its tensors and its metadata. ValueError if the
    checkpoint was written by a policy of another size (other arguments, cameras or image size)."""
    tensors, meta = load_checkpoint(named_checkpoint(path))
    weights = tensors["policy.flat"]
    if weights.numel() != flat.numel():
        raise ValueError(f"checkpoint {path} holds {weights.numel()} weights; the policy built here has "
                         f"{flat.numel()} (other policy arguments, cameras or image size?)")
    flat.copy_(weights)
    return tensors, meta


def optimizer_state(tensors: dict[str, torch.Tensor], template: dict[str, Any]) -> dict[str, Any]:
    """An optimizer ``state_dict`` like ``template`` (the optimizer's own, for its param groups) with
    the state tensors a training checkpoint holds."""
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            template["state"].setdefault(int(i), {})[name] = value
    return template


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would change it for every thread for
    a moment): a job under dvlad runs with 077, and its checkpoints must stay its user's alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


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
