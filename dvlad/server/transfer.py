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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dvla.tarball import safe_extract, tar_chunks

CHUNK = 1 << 20


class TooLarge(ValueError):
    pass


def checkpoint_files(run: Path) -> list[tuple[str, Path]]:
    """The checkpoint files of a run directory (``*.safetensors``; temporaries end in ``.tmp``)."""
    return sorted((p.name, p) for p in run.glob("*.safetensors") if p.is_file())


async def tar_stream(files: list[tuple[str, Path]]) -> AsyncIterator[bytes]:
    """:func:`dvla.tarball.tar_chunks` with the disk reads off the event loop."""
    chunks = tar_chunks(files)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


def _own(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` (and all below it) to the user, when the daemon is root and the user is not."""
    if os.geteuid() != 0 or uid == 0:
        return
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid)
    os.chown(path, uid, gid)


def _unpack(spool: Path, home: Path, digest: str, uid: int, gid: int) -> tuple[Path, list[str]]:
    target = home / digest
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=home))
    try:
        with spool.open("rb") as archive:
            names = safe_extract(archive, staging)
        _own(staging, uid, gid)
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

    Raises :class:`TooLarge` past the cap and ValueError for a tar that is broken or unsafe."""
    uploads.mkdir(mode=0o755, exist_ok=True)
    home = uploads / str(uid)
    home.mkdir(mode=0o700, exist_ok=True)
    _own(home, uid, gid)
    digest, size = hashlib.sha256(), 0
    fd, name = tempfile.mkstemp(prefix=".incoming-", dir=home)
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
            target, names = await asyncio.to_thread(_unpack, spool, home, digest.hexdigest(), uid, gid)
        except (tarfile.TarError, EOFError) as exc:
            raise ValueError(f"not a usable tar: {exc}") from None
    finally:
        spool.unlink(missing_ok=True)
    return {"path": str(target), "sha256": digest.hexdigest(), "bytes": size, "files": names}
