"""dvlad's side of base sharing: one holder process per (sharing domain, device, base), started for
the first job that shares it and ended after the last.

Who shares with whom (the security rule): a job's *sharing domain* is its user, or the group that
dvlad's ``node.share_base_group`` names when the job's user is a member. Jobs share a holder only
within one domain: another user's job on the same base and device gets a holder, and a copy, of its
own. Why: a job maps the base's memory and could write it (a GPU cannot map CUDA memory read-only
for one process and not another); the hash checks at each checkpoint catch a write, after the fact.
So by default only a user's own jobs trust each other's, and a lab that wants more says so.

The base's *key* is its content: for a pretrained trunk the SHA-256 of its directory's files, for
a trunk built from a preset what determines its bytes (the trunk's config, the seed and the dtypes,
which :func:`dvlad.sharing.holder.build_base` builds from). The holder then measures the bytes it
built (the manifest's ``sha256``), which every job checks. A pretrained directory is the user's: it is
read once per job, in the background, by a child process as the job's user, within bounds
(:mod:`dvlad.sharing.base_digest`); until then the job's base has no key.

A holder outlives a dvlad restart (its jobs keep mapping it): each is recorded in the state directory
(:mod:`dvlad.sharing.records`), and the next dvlad re-adopts the live ones that active jobs still
map (:meth:`BaseHolders.recover`), ends those that none does, and forgets the dead ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dvla.spec import JobSpec, dump_toml
from dvlad.runtime.jobfiles import read_job_file
from dvlad.runtime.launch import PASS_THROUGH, PASSED_ENV, process_start
from dvlad.segments import owner_prefix, reclaim
from dvlad.sharing.base import MANIFEST
from dvlad.sharing.base_digest import read_digest
from dvlad.sharing.records import Records
from dvlad.store import Job

STOP_WAIT_S = 10.0
OUT = "out"
"""The one folder of a holder's directory that its user owns: where the holder writes its manifest."""
GONE = ".gone-"
"""The name prefix of a holder's directory of before while it is removed."""
MANIFEST_MAX = 16 << 20
"""Bytes of a holder's manifest read at most (it lists a base's tensors, ~150 bytes each)."""


def base_key(spec: JobSpec, pretrained: str | None = None) -> str:
    """The content key of a share_base job's base (see the module docstring); ``pretrained``: the
    digest of its ``pretrained`` directory where it names one (:func:`~dvlad.sharing.base_digest.digest`)."""
    args = spec.policy.args
    what: dict[str, object] = {"precision": spec.resources.precision, "dtype": args.get("dtype", "float32")}
    if args.get("pretrained"):
        what["pretrained"] = pretrained
    else:
        what.update(preset=args.get("preset") or "tiny", trunk=args.get("trunk") or {},
                    vocab_size=int(args.get("vocab_size", 1024)), seed=spec.job.seed)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def sharing_domain(user: str, groups: list[str], share_group: str) -> str:
    """Whose jobs may share a base with this one: its user's, or ``share_group``'s if it is a member."""
    return f"group:{share_group}" if share_group and share_group in groups else f"user:{user}"


def device_of(gpu_ids: list[int]) -> str:
    return f"cuda:{gpu_ids[0]}" if gpu_ids else "cpu"


@dataclass
class Holder:
    """One live holder: its process, its directory, and the jobs mapping its base."""

    key: str
    directory: Path
    prefix: str
    pid: int
    start: float
    """The process's start time: with the pid, what makes it this holder and no recycled pid."""
    popen: subprocess.Popen | None
    """None for a holder adopted after a restart: not our child, so watched by pid + start time."""
    jobs: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.directory.name

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return process_start(self.pid) == self.start

    def record(self) -> dict:
        return {"key": self.key, "pid": self.pid, "start": self.start, "prefix": self.prefix,
                "jobs": sorted(self.jobs)}

    @property
    def manifest_path(self) -> Path:
        return self.directory / OUT / MANIFEST

    def manifest(self) -> dict | None:
        """The holder's manifest once it is written, else None. Read as :mod:`dvlad.runtime.jobfiles`
        reads a job's files, and at most :data:`MANIFEST_MAX` bytes: the directory is the holder's
        user's, who could put a FIFO (an open that never returns), a device or a link to a root-only
        file in its place, and ``/metrics`` reads it on dvlad's event loop."""
        try:
            return json.loads(read_job_file(self.manifest_path, limit=MANIFEST_MAX))
        except (OSError, ValueError):
            return None


class BaseHolders:
    """The holders of one dvlad (its state directory names their folders and segments)."""

    def __init__(self, state_dir: Path, owner: str, share_group: str = ""):
        self.root, self.owner, self.share_group = state_dir / "bases", owner, share_group
        self.records = Records(state_dir)
        self.holders: dict[str, Holder] = {}
        self.of_job: dict[int, str] = {}
        self.reads: dict[int, asyncio.Task[str]] = {}
        """Job id -> the read of its pretrained directory (:meth:`read`), kept while the job is live."""

    def recover(self, active: set[int]) -> None:
        """After a restart: re-adopt each recorded holder that is alive (pid and start time match)
        with those of its jobs still ``active``; end the live ones that no active job maps, and
        forget the dead ones; either way their segments go."""
        for left in self.root.glob(f"{GONE}*"):  # a removal a stopped dvlad did not finish
            _remove_later(left)
        for name, record in self.records:
            holder = Holder(record["key"], self.root / name, record["prefix"], record["pid"], record["start"],
                            None, set(record["jobs"]) & active)
            if holder.alive() and holder.jobs:
                self.holders[holder.key] = holder
                self.of_job.update(dict.fromkeys(holder.jobs, holder.key))
                self.records.save(name, holder.record())
            else:
                self._stop(holder)

    def read(self, job: Job, spec: JobSpec) -> asyncio.Task[str] | None:
        """The read of the job's ``pretrained`` directory (its digest, or raising
        :class:`~dvlad.sharing.base_digest.BaseUnreadable`), started the first time it is asked for;
        None for a base built from a preset (nothing to read)."""
        directory = spec.policy.args.get("pretrained")
        if not directory:
            return None
        if job.id not in self.reads:
            read = self.reads[job.id] = asyncio.get_running_loop().create_task(read_digest(directory, job))
            # a job gone before its start never asks for the error: taken here, asyncio does not log it
            read.add_done_callback(lambda done: done.cancelled() or done.exception())
        return self.reads[job.id]

    def forget_reads(self, live: set[int]) -> None:
        """Drop the reads of jobs no longer queued or active (stopping those still reading)."""
        for job_id in set(self.reads) - live:
            self.reads.pop(job_id).cancel()

    def admission_key(self, job: Job, spec: JobSpec) -> str | None:
        """What memory-fit admission counts once per GPU: the holder's key without its device; None
        while the base's directory is read, or where it could not be (its start will say why)."""
        read = self.read(job, spec)
        if read is not None and not (read.done() and not read.cancelled() and read.exception() is None):
            return None
        return f"{sharing_domain(job.user, job.groups, self.share_group)}|{self._base(job, spec)}"

    def _base(self, job: Job, spec: JobSpec) -> str:
        """The job's :func:`base_key`, once its directory has been read (raises
        :class:`~dvlad.sharing.base_digest.BaseUnreadable`)."""
        read = self.read(job, spec)
        return base_key(spec, read.result() if read is not None else None)

    def acquire(self, job: Job, spec: JobSpec, gpu_ids: list[int]) -> Path:
        """The manifest path of the holder job ``job`` shares (started now if it is the first job);
        the job waits for the manifest itself, so dvlad never waits for a base to build. A pretrained
        base must have been read (:meth:`read` done); one that could not be raises
        :class:`~dvlad.sharing.base_digest.BaseUnreadable`."""
        key = f"{sharing_domain(job.user, job.groups, self.share_group)}|{device_of(gpu_ids)}|{self._base(job, spec)}"
        holder = self.holders.get(key)
        if holder is None or not holder.alive():
            holder = self.holders[key] = self._start(key, job, spec, gpu_ids)
        holder.jobs.add(job.id)
        self.of_job[job.id] = key
        self.records.save(holder.name, holder.record())
        return holder.manifest_path

    def release(self, job_id: int) -> None:
        """Job ``job_id`` ended: end its holder if it was the last job using it."""
        key = self.of_job.pop(job_id, None)
        holder = self.holders.get(key) if key else None
        if holder is None:
            return
        holder.jobs.discard(job_id)
        if not holder.jobs:
            del self.holders[key]
            self._stop(holder)
        else:
            self.records.save(holder.name, holder.record())

    def stop_all(self) -> None:
        """End every holder (dvlad itself never does: its holders outlive it, as its jobs do)."""
        for holder in list(self.holders.values()):
            self._stop(holder)
        self.holders.clear()
        self.of_job.clear()

    def _start(self, key: str, job: Job, spec: JobSpec, gpu_ids: list[int]) -> Holder:
        """Start a holder in a fresh directory laid out as a job's (:func:`dvlad.runtime.launch.spawn`):
        ``bases/NAME/`` is dvlad's (0711), so what root writes there (``spec.toml``, ``holder.log``, both
        the holder's user's, 0600) is created new and never through a link; the holder writes its
        manifest into ``out/``, the user's: 0700, or 0750 with the sharing group for a group's holder,
        so only the jobs allowed to map the base can read it (it carries the CUDA IPC handle)."""
        name = hashlib.sha256(key.encode()).hexdigest()[:12]
        directory = self.root / name
        self.root.mkdir(mode=PASS_THROUGH, exist_ok=True)
        _discard(directory)  # a holder of this key before: its files say nothing now, and out/ was a user's
        directory.mkdir(mode=PASS_THROUGH)
        os.chmod(directory, PASS_THROUGH)  # whatever dvlad's umask
        in_group = key.startswith("group:")
        identity: dict = {}
        owner = None
        if os.geteuid() == 0 and job.uid != 0:  # the holder runs as the first job's user (its group's)
            gid = grp.getgrnam(self.share_group).gr_gid if in_group else job.gid
            identity = {"user": job.uid, "group": gid, "extra_groups": os.getgrouplist(job.user, job.gid)}
            owner = (job.uid, gid)
        out = directory / OUT
        out.mkdir(mode=0o700)
        if owner is not None:
            os.chown(out, *owner)
        os.chmod(out, 0o750 if in_group else 0o700)
        spec_file = directory / "spec.toml"
        with _new_file(spec_file, owner) as f:
            f.write(dump_toml(spec).encode())
        prefix = f"{owner_prefix(self.owner)}base{name}-"
        env = {**{k: os.environ[k] for k in PASSED_ENV if k in os.environ},
               "PATH": os.defpath + ":" + str(Path(sys.executable).parent), "PYTHONUNBUFFERED": "1",
               "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpu_ids[:1]))}
        # its own session, as a job's: a signal to dvlad's process group (Ctrl-C) must not end the
        # base that jobs, which outlive dvlad, still map
        with _new_file(directory / "holder.log", owner) as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "dvlad.sharing.holder", str(spec_file), "--device",
                 "cuda" if gpu_ids else "cpu", "--dir", str(out), "--prefix", prefix],
                env=env, cwd=out, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                close_fds=True, umask=0o007 if in_group else 0o077, start_new_session=True, **identity)
        return Holder(key, directory, prefix, popen.pid, process_start(popen.pid) or 0.0, popen)

    def _stop(self, holder: Holder) -> None:
        """SIGTERM, then SIGKILL; its segments and its record go either way (jobs that still map the
        segments keep them)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if holder.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(holder.pid, sig)
            deadline = time.monotonic() + STOP_WAIT_S
            while holder.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        reclaim(holder.prefix)
        self.records.remove(holder.name)


def _new_file(path: Path, owner: tuple[int, int] | None) -> BinaryIO:
    """A file dvlad creates for a holder in its own folder, given to ``owner`` (uid, gid) where the holder
    runs as another user, 0600. Created, never opened: ``O_EXCL`` with ``O_NOFOLLOW`` fails on anything
    already there, a link included, rather than write root's bytes through it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def _discard(directory: Path) -> None:
    """Take a holder's directory of before out of the way at once (a rename inside dvlad's own folder)
    and remove it in a thread: its ``out/`` was a user's, who may have filled it with any number of
    files. ``shutil.rmtree`` removes links, never what they point to. A directory left half removed by
    a dvlad that stopped meanwhile goes at the next start (:meth:`BaseHolders.recover`)."""
    gone = directory.with_name(f"{GONE}{directory.name}-{secrets.token_hex(4)}")
    try:
        directory.rename(gone)
    except FileNotFoundError:
        return
    _remove_later(gone)


def _remove_later(directory: Path) -> None:
    threading.Thread(target=shutil.rmtree, args=(directory,), kwargs={"ignore_errors": True},
                     name="dvlad-holder-dir-removal", daemon=True).start()
