"""Tar streams of a few files, written and read without holding them in memory.

Why tar: a checkpoint (or a directory of them) travels as one HTTP body both ways, uploads to a remote
dvlad and downloads from it. Why hand-rolled writing: ``tarfile`` wants a seekable file to write to,
while a response body is a stream of chunks; a tar is just a 512-byte header per file, the bytes, zero
padding and two zero blocks. Reading goes through ``tarfile`` with every member checked first: only
regular files and directories with relative names inside the target (no ``..``, no links, no devices).

Why extraction is hand-written too: ``extractall(filter="data")`` exists only from Python 3.11.4, and
3.11.0-3.11.3 (Debian 12's 3.11.2) is within ``requires-python``. Writing the members ourselves gives the
``data`` filter's guarantees on every 3.11: no name outside the target, no links or devices, no
sparse files (a small tar that unpacks into a huge file), modes without set-id, sticky or write bits
for group and others, and no file written twice or through anything already there (``O_EXCL``,
``O_NOFOLLOW``).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

BLOCK = 512
CHUNK = 1 << 20


def _open_for_reading(path: Path) -> BinaryIO:
    return path.open("rb")


def tar_chunks(files: list[tuple[str, Path]],
               open_file: Callable[[Path], BinaryIO] = _open_for_reading) -> Iterator[bytes]:
    """A tar of ``files`` (name in the archive, path on disk), chunk by chunk.

    Each file is opened once and its size taken from that open file, so a file replaced atomically
    meanwhile (``os.replace`` of a new checkpoint) is sent whole, in its old or its new version.
    ``open_file``: how to open one (the daemon passes one that refuses symlinks)."""
    for name, path in files:
        with open_file(path) as f:
            info = tarfile.TarInfo(name)
            st = os.fstat(f.fileno())
            info.size, info.mode, info.mtime = st.st_size, 0o644, int(st.st_mtime)
            yield info.tobuf(tarfile.PAX_FORMAT)
            left = info.size
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"{path} shrank while being sent")
                left -= len(chunk)
                yield chunk
            if info.size % BLOCK:
                yield bytes(BLOCK - info.size % BLOCK)
    yield bytes(2 * BLOCK)


def _member_problem(member: tarfile.TarInfo) -> str | None:
    if not (member.isreg() or member.isdir()) or member.issparse():
        return "only regular files and directories may be sent (no links, devices, fifos or sparse files)"
    name = PurePosixPath(member.name)
    if not member.name or "\0" in member.name or name.is_absolute() or ".." in name.parts:
        return "names must be relative and stay inside the target (no '..', no leading '/')"
    return None


def _mode(member: tarfile.TarInfo) -> int:
    """The ``data`` filter's modes: owner read-write (and search, for directories) always; executable
    bits kept; set-id, sticky and group/other write bits dropped."""
    base = 0o700 if member.isdir() else 0o600
    return (base | member.mode) & 0o755


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    """One checked member below ``dest``: a directory (made with its parents), or a file that must not
    exist yet (a name given twice is refused, never followed through a link)."""
    path = dest.joinpath(*PurePosixPath(member.name).parts)
    try:
        if member.isdir():
            path.mkdir(mode=_mode(member), parents=True, exist_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _mode(member))
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{member.name!r}: the archive holds this name twice, or as a file and a directory") from None
    with os.fdopen(fd, "wb") as out, tar.extractfile(member) as data:
        os.fchmod(out.fileno(), _mode(member))  # what the umask took away
        while chunk := data.read(CHUNK):
            out.write(chunk)


def safe_extract(archive: IO[bytes], dest: Path) -> list[str]:
    """Extract the tar read from ``archive`` into ``dest``; returns the file names.

    Raises ValueError naming the first unsafe member before anything is written."""
    with tarfile.open(fileobj=archive, mode="r:") as tar:
        members = tar.getmembers()
        for member in members:
            problem = _member_problem(member)
            if problem:
                raise ValueError(f"{member.name!r}: {problem}")
        dest.mkdir(parents=True, exist_ok=True)
        for member in members:
            _write(tar, member, dest)
    return [m.name for m in members if m.isreg()]
