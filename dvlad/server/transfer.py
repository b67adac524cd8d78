"""Files that cross the API whole: a job's checkpoint going out, a user's checkpoint coming in.

Why uploads are content-addressed (``STATE_DIR/uploads/UID/SHA256/``): a remote user's job must read
the weights as that user, so they sit in a directory the user owns (0700); sending the same file twice
costs no second copy, and a path names exactly one content. Why the checks: the tar comes from the
network, so it is capped in size while it streams in, and only regular files and directories with
relative names are extracted (``dvla.tarball.safe_extract``): no ``..``, no links, no devices.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dvla.tarball import safe_extract, tar_chunks
from dvlad.runtime.jobfiles import open_job_file
from dvlad.runtime.launch import PASS_THROUGH

CHUNK = 1 << 20
LIST_MAX = 10_000
"""Entries of a run directory looked through for its checkpoint, at most: a job writes a few dozen
files there (checkpoints, metrics, TensorBoard logs)."""
LIST_S = 2.0
"""Seconds that looking may take, at most (a slow network file system)."""


class TooLarge(ValueError):
    pass


class Unlisted(OSError):
    """A run directory too large to look through for a checkpoint (the reason says which bound)."""


def checkpoint_files(run: Path, max_entries: int = LIST_MAX, timeout_s: float = LIST_S) -> list[tuple[str, Path]]:
    """The checkpoint files of a run directory (``*.safetensors``; temporaries end in ``.tmp``):
    regular files only, not symlinks, and ``run`` itself no link (the job's user owns ``run/``; see
    :mod:`dvlad.runtime.jobfiles`). Raises :class:`Unlisted` past ``max_entries`` entries or
    ``timeout_s`` seconds: the user may fill ``run/`` with millions of names, and the coordinator
    looks on dvlad's event loop."""
    try:
        fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # none yet, or a link or a file in its place: no checkpoint there
        return []
    found, deadline = [], time.monotonic() + timeout_s
    try:
        with os.scandir(fd) as entries:
            for seen, entry in enumerate(entries, 1):
                if seen > max_entries or time.monotonic() >= deadline:
                    raise Unlisted(f"{run} was not looked through within the bounds of {max_entries} entries "
                                   f"and {timeout_s:g} s")
                if entry.name.endswith(".safetensors") and entry.is_file(follow_symlinks=False):
                    found.append((entry.name, run / entry.name))
    finally:
        os.close(fd)
    return sorted(found)


async def tar_stream(files: list[tuple[str, Path]]) -> AsyncIterator[bytes]:
    """:func:`dvla.tarball.tar_chunks` of a job's files, opened as :func:`open_job_file` does (a file
    swapped for a symlink since it was listed is refused), with the disk reads off the event loop."""
    chunks = tar_chunks(files, open_job_file)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


def _give(tree: Path, uid: int, gid: int) -> None:
    """Give ``tree`` (and all below it) to the user, when the daemon is root and the user is not.
    Never through a symlink: ``os.chown`` follows them, and a link in the wrong place would hand the
    user any file of the system."""
    if os.geteuid() != 0 or uid == 0:
        return
    for root, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    os.chown(tree, uid, gid, follow_symlinks=False)


def _unpack(spool: Path, private: Path, home: Path, digest: str, uid: int, gid: int) -> tuple[Path, list[str]]:
    """Extract in the daemon's own directory, give the tree to the user, then move it into their home:
    until it is complete and theirs, the user can neither see nor swap anything in it."""
    target = home / digest
    staging = Path(tempfile.mkdtemp(prefix="unpack-", dir=private))
    try:
        with spool.open("rb") as archive:
            names = safe_extract(archive, staging)
        _give(staging, uid, gid)
        try:
            staging.rename(target)
        except OSError:  # the same content is there already (an earlier or a concurrent upload)
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, names


async def receive(body: AsyncIterator[bytes], uploads: Path, uid: int, gid: int, cap: int) -> dict[str, Any]:
    """Stream a tar body to disk (at most ``cap`` bytes), then extract it into the user's upload home.

    The body is spooled and extracted under ``uploads/.staging`` (the daemon's, 0700), never in the
    user's home, which they may fill with links. Raises :class:`TooLarge` past the cap and
    ValueError for a tar that is broken or unsafe."""
    uploads.mkdir(mode=PASS_THROUGH, exist_ok=True)
    os.chmod(uploads, PASS_THROUGH)  # each user reaches their own UID directory; nobody lists whose exist
    private = uploads / ".staging"
    private.mkdir(mode=0o700, exist_ok=True)
    home = uploads / str(uid)
    home.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0 and uid != 0:
        os.chown(home, uid, gid, follow_symlinks=False)
    digest, size = hashlib.sha256(), 0
    fd, name = tempfile.mkstemp(prefix="incoming-", dir=private)
    spool = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in body:
                size += len(chunk)
                if size > cap:
                    raise TooLarge(f"upload over the limit of {cap} bytes (daemon.max_upload_bytes)")
                digest.update(chunk)
                f.write(chunk)
        try:
            target, names = await asyncio.to_thread(_unpack, spool, private, home, digest.hexdigest(), uid, gid)
        except (tarfile.TarError, EOFError) as exc:
            raise ValueError(f"not a usable tar: {exc}") from None
    finally:
        spool.unlink(missing_ok=True)
    return {"path": str(target), "sha256": digest.hexdigest(), "bytes": size, "files": names}
