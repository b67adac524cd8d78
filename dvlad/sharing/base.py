"""One read-only copy of a LoRA job's base weights, shared by the jobs fine-tuning it on a device.

A LoRA job trains adapters on a frozen trunk; the trunk (a 1B model: 2 GiB in bf16) is the same
bytes in every job built from the same checkpoint. So a holder process (:mod:`dvlad.sharing.holder`,
started by dvlad) builds it once per device and base, and each job maps it instead of building its
own: its tensors are the holder's memory, over CUDA IPC on a GPU (torch.multiprocessing's sharing of
CUDA tensors) and over a ``/dev/shm`` segment on the CPU (named under the daemon's prefix, so dvlad
reclaims it, :mod:`dvlad.segments`). The same code path either way, so the CPU tests exercise it.

Read-only, by construction and checked: the base tensors have ``requires_grad`` False, are never
published nor in the optimizer (:meth:`dvlad.policies.base.Policy.published_parameters`), and the
job verifies the base's SHA-256 at each checkpoint against the holder's (:meth:`SharedBase.verify`):
a job that wrote into it fails with :class:`BaseChanged`, naming both hashes.

The base is grouped by dtype into one flat buffer each (a GPU base is bf16 weights and fp32 rotary
buffers), so a device holds one storage per dtype and one IPC handle shares each.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import json
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

MANIFEST_ENV = "DVLA_SHARED_BASE"
"""The path of the holder's manifest, set by dvlad in the environment of a job that shares a base."""
MANIFEST = "manifest.json"
FAILED = "failed.txt"
"""Written by a holder that could not build the base: the reason, for the jobs waiting on it."""
WAIT_S = 600.0
"""How long a job waits for its holder's manifest (a 1B base takes seconds to build on a GPU)."""


class BaseChanged(RuntimeError):
    """The shared base's bytes are not what the holder published: something wrote into them."""


class BaseUnavailable(RuntimeError):
    """The job was told to share a base, and its holder failed or never came."""


def base_tensors(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's parameters and buffers by name (persistent or not): all that a built trunk holds."""
    return {**dict(trunk.named_parameters()), **dict(trunk.named_buffers())}


def content_hash(flats: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the flat buffers' bytes, by dtype name in order (a CPU copy of a GPU buffer)."""
    digest = hashlib.sha256()
    for name in sorted(flats):
        digest.update(name.encode())
        digest.update(flats[name].detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def export(tensors: dict[str, torch.Tensor], segment_prefix: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Copy ``tensors`` into one shared flat buffer per dtype (on their device) and describe them:
    ``(manifest, flats)``; the caller keeps ``flats`` alive as long as jobs use them. On the CPU a
    buffer is the segment ``segment_prefix + dtype`` in /dev/shm; on a GPU, CUDA memory whose IPC
    handle (torch's ``reduce_tensor``) the manifest carries."""
    from torch.multiprocessing.reductions import reduce_tensor

    device = next(iter(tensors.values())).device
    sizes: dict[str, int] = {}
    layout = []
    for name, t in tensors.items():
        group = _dtype_name(t.dtype)
        layout.append({"name": name, "dtype": group, "shape": list(t.shape), "offset": sizes.get(group, 0)})
        sizes[group] = sizes.get(group, 0) + t.numel()
    flats, groups = {}, {}
    for group, numel in sizes.items():
        dtype = getattr(torch, group)
        if device.type == "cpu":
            path = f"/dev/shm/{segment_prefix}{group}"
            flats[group] = torch.from_file(path, shared=True, size=numel, dtype=dtype)
            groups[group] = {"numel": numel, "segment": path}
        else:
            flats[group] = torch.empty(numel, dtype=dtype, device=device)
            handle = pickle.dumps(reduce_tensor(flats[group]))
            groups[group] = {"numel": numel, "ipc": base64.b64encode(handle).decode()}
    for entry, t in zip(layout, tensors.values(), strict=True):
        flat = flats[entry["dtype"]]
        flat[entry["offset"]:entry["offset"] + t.numel()].copy_(t.detach().reshape(-1))
    nbytes = sum(f.numel() * f.element_size() for f in flats.values())
    manifest = {"device": str(device), "tensors": layout, "groups": groups, "bytes": nbytes,
                "sha256": content_hash(flats)}
    return manifest, flats


@dataclass
class SharedBase:
    """A job's view of the holder's base: the tensors by name (views of the shared buffers)."""

    manifest: dict[str, Any]
    flats: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    def holds(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is the shared memory (a cast or move must leave it alone)."""
        ptr = t.untyped_storage().data_ptr()
        return any(ptr == f.untyped_storage().data_ptr() for f in self.flats.values())

    def verify(self) -> None:
        """Raise :class:`BaseChanged` unless the base's bytes still hash to the holder's SHA-256."""
        now = content_hash(self.flats)
        if now != self.sha256:
            raise BaseChanged(f"the shared base weights changed: SHA-256 {now[:16]}… now, {self.sha256[:16]}… as "
                              "its holder built them; a job must never write the shared base (its tensors are "
                              "frozen and not in the optimizer: something wrote into them in place)")


def _rebuild(group: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    if "segment" in group:
        return torch.from_file(group["segment"], shared=True, size=group["numel"], dtype=dtype)
    rebuild, args = pickle.loads(base64.b64decode(group["ipc"]))
    return rebuild(*args)


def attach(manifest: dict[str, Any]) -> SharedBase:
    """Map the holder's buffers (``manifest``, as :func:`export` made it) and check their hash."""
    flats = {group: _rebuild(g, getattr(torch, group)) for group, g in manifest["groups"].items()}
    tensors = {e["name"]: flats[e["dtype"]][e["offset"]:e["offset"] + _numel(e["shape"])].view(e["shape"])
               for e in manifest["tensors"]}
    base = SharedBase(manifest, flats, tensors)
    base.verify()
    return base


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def wait_for_manifest(path: Path, timeout: float = WAIT_S) -> dict[str, Any]:
    """The holder's manifest once it is written; :class:`BaseUnavailable` if the holder failed (its
    reason) or nothing came within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return json.loads(path.read_text())
        failed = path.with_name(FAILED)
        if failed.exists():
            raise BaseUnavailable(f"the shared base's holder failed: {failed.read_text().strip()}")
        if time.monotonic() > deadline:
            raise BaseUnavailable(f"the shared base's holder wrote no manifest ({path}) within {timeout:.0f} s")
        time.sleep(0.05)


_ATTACHED: dict[str, SharedBase] = {}
_ACTIVE: contextvars.ContextVar[SharedBase | None] = contextvars.ContextVar("shared_base", default=None)


def from_environment() -> SharedBase | None:
    """This process's shared base (attached once: the actor and a learner thread map it once), or
    None when dvlad gave the job none (``resources.share_base`` off, or a job run by hand)."""
    path = os.environ.get(MANIFEST_ENV)
    if not path:
        return None
    if path not in _ATTACHED:
        _ATTACHED[path] = attach(wait_for_manifest(Path(path)))
    return _ATTACHED[path]


def private(tensors: Iterable[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """``tensors`` without those of a shared base this process mapped: those are their holder's
    memory, not in this job's weight pool."""
    bases = list(_ATTACHED.values())
    return [t for t in tensors if t is None or not any(b.holds(t) for b in bases)]


@contextlib.contextmanager
def using(base: SharedBase | None) -> Iterator[None]:
    """Trunks built inside take their weights from ``base`` (:func:`active`) instead of making them."""
    token = _ACTIVE.set(base)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> SharedBase | None:
    return _ACTIVE.get()


def install(trunk: nn.Module, base: SharedBase) -> None:
    """Make every parameter and buffer of ``trunk`` (built on the meta device) the shared tensor of
    its name, frozen. Raises ValueError when the base does not match the trunk (another model)."""
    mine = base_tensors(trunk)
    if set(mine) != set(base.tensors) or any(mine[n].shape != base.tensors[n].shape for n in mine):
        odd = sorted(set(mine) ^ set(base.tensors)) or [n for n in mine if mine[n].shape != base.tensors[n].shape]
        raise ValueError(f"the shared base does not match this job's trunk (first difference: {odd[0]})")
    for full, t in base.tensors.items():
        owner_name, _, leaf = full.rpartition(".")
        owner = trunk.get_submodule(owner_name) if owner_name else trunk
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(t, requires_grad=False)
        else:
            owner._buffers[leaf] = t


def cast(module: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """``module.to(device, dtype)`` (floating tensors only take ``dtype``), leaving the shared base's
    tensors as they are: a cast would make a private copy of them."""
    base = active()

    def convert(t: torch.Tensor) -> torch.Tensor:
        if base is not None and base.holds(t):
            return t
        return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)

    return module._apply(convert)
