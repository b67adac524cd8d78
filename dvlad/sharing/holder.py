"""The process that holds one shared base on one device: ``python -m dvlad.sharing.holder``.

Started by dvlad for the first job that shares a base on a device (:mod:`dvlad.sharing.holders`),
ended after the last one. Why a process of its own, not the first job: the base must outlive
whichever job happened to come first; and on a GPU the memory that CUDA IPC shares belongs to the
process that allocated it, so that process must live while any job maps it.

It builds the trunk exactly as the jobs' own :func:`dvlad.policies.build_policy` would (the job's
seed, on the device, the trunk first), so a shared base is bit for bit the base a job would have
built alone; it exports it (:func:`dvlad.sharing.base.export`), writes ``manifest.json`` atomically
beside its pid, and waits for SIGTERM; then it removes its ``/dev/shm`` segments and exits.
A failure is written to ``failed.txt`` for the jobs waiting on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

import torch

from dvla.spec import JobSpec, load_spec
from dvlad.policies.trunk import DTYPES, build_trunk, load_trunk, trunk_config
from dvlad.segments import reclaim
from dvlad.sharing.base import FAILED, MANIFEST, base_tensors, export


def base_dtype(spec: JobSpec, device: torch.device) -> torch.dtype:
    """The dtype jobs would run their replica in: bf16 on a GPU unless fp32 is asked, fp32 on a CPU."""
    if device.type == "cuda" and spec.resources.precision != "fp32":
        return torch.bfloat16
    return torch.float32


def build_base(spec: JobSpec, device: torch.device) -> torch.nn.Module:
    """The job's trunk without adapters, built as :class:`~dvlad.policies.transformer_vla.TransformerVLA`
    builds it first (same seed, same device), cast to :func:`base_dtype`."""
    args = spec.policy.args
    dtype = DTYPES[args.get("dtype", "float32")]
    torch.manual_seed(spec.job.seed)
    with torch.device(device):
        if args.get("pretrained"):
            trunk = load_trunk(args["pretrained"], dtype)
        else:
            trunk = build_trunk(trunk_config(args.get("preset"), args.get("trunk") or {},
                                             int(args.get("vocab_size", 1024))), dtype)
    trunk.requires_grad_(False)
    return trunk.to(device=device, dtype=base_dtype(spec, device))


def publish(path: Path, text: str) -> None:
    """Write ``path`` whole (a temporary renamed over it, so a job never reads half of it), mode 0640
    less the umask dvlad starts the holder with: 0600 for a user's holder, 0640 for a group's. Why no
    more: the manifest carries the base's CUDA IPC handle (whoever reads it can map, and write, the
    base) and jobs unpickle it, so only the jobs allowed to share the base may read it, and only the
    holder may write it."""
    tmp = path.with_name(f"{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def hold(spec: JobSpec, device: torch.device, directory: Path, prefix: str, stop: threading.Event) -> None:
    """Build, export and publish the base, then keep it until ``stop`` is set."""
    trunk = build_base(spec, device)
    manifest, flats = export(base_tensors(trunk), prefix)
    del trunk  # the flat buffers are the base now
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    publish(directory / MANIFEST, json.dumps(manifest))
    while not stop.wait(0.5):  # a signal handler runs between waits
        pass
    del flats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dvlad.sharing.holder", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="a job file of a job that shares the base (its policy and seed)")
    parser.add_argument("--device", default="cpu", help='"cpu", or "cuda" (the one GPU CUDA_VISIBLE_DEVICES shows)')
    parser.add_argument("--dir", type=Path, required=True, help="where to write manifest.json (or failed.txt)")
    parser.add_argument("--prefix", required=True, help="the /dev/shm name prefix of its segments (dvlad's)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        hold(load_spec(args.spec), torch.device(args.device), args.dir, args.prefix, stop)
    except Exception as exc:  # the jobs waiting on the manifest read why
        with contextlib.suppress(OSError):
            publish(args.dir / FAILED, f"{type(exc).__name__}: {exc}\n")
        print(f"base holder failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        reclaim(args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
