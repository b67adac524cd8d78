"""The content digest of a job's ``pretrained`` base directory, read for dvlad as the job's user.

The digest is what a pretrained base's key is (:func:`dvlad.sharing.holders.base_key`): the SHA-256
of the names and bytes of the directory's ``.json`` and ``.safetensors`` files. Why dvlad does not
read them itself: the directory is named by a user, and dvlad runs as root on one event loop. Read
there, a file linked to ``/dev/zero`` hung the daemon, a large directory held every client while it
was hashed, and root read for a user files the user may not read. So the rule: dvlad never opens a
path a user names except as that user, never on its event loop, never without a bound.

:func:`read_digest` (the daemon's side) runs ``python -m dvlad.sharing.base_digest``: a child that
takes the user's uid, gid and groups before it opens anything of theirs (it starts as dvlad's own
user, so a user need not be able to run dvlad's interpreter for this), refuses anything but regular
files, hashes at most :data:`MAX_BYTES` and is killed after :data:`TIMEOUT_S`; dvlad awaits it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import pwd
import stat
import sys
from pathlib import Path
from typing import Protocol

SUFFIXES = (".json", ".safetensors")
"""The files of a Hugging Face model directory that make up its content (config and weights)."""
MAX_BYTES = 1 << 39
"""The most bytes a base's files may hold (512 GiB): above the weights of any trunk one GPU holds, even
in fp32 (an H200's 141 GB of bf16 is 282 GB of fp32), so only something that is no model is refused."""
TIMEOUT_S = 1800.0
"""The longest a base's files may take to read: 512 GiB at 300 MB/s, a slow network file system's pace."""
CHUNK = 1 << 24
PROBLEMS_SHOWN = 5
"""Problems a reason lists at most (a directory of thousands of bad files gives a short line)."""


class BaseUnreadable(ValueError):
    """A job's base directory that its user cannot have read (the reason names the path and the bound)."""


class Owner(Protocol):
    """Whom a base is read as (a :class:`dvlad.store.Job`)."""

    user: str
    uid: int
    gid: int


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: Path) -> tuple[int, int]:
    """An open descriptor of ``path`` and its size, if it is (or links to) a regular file; else raise
    :class:`BaseUnreadable` saying what it is. Opened without blocking: a FIFO's open never returns."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        os.set_blocking(fd, True)
        return fd, st.st_size
    os.close(fd)
    link = f" (a link to {os.readlink(path)})" if path.is_symlink() else ""
    raise BaseUnreadable(f"{path.name}{link} is {_kind(st.st_mode)}, not a regular file")


def digest(directory: Path, max_bytes: int = MAX_BYTES) -> str:
    """The SHA-256 of the names and bytes of ``directory``'s ``.json`` and ``.safetensors`` files, in
    name order; raise :class:`BaseUnreadable` for any that is not a readable regular file, or when
    they hold more than ``max_bytes`` (checked before a byte is hashed, and again while reading)."""
    names = sorted(p.name for p in directory.iterdir() if p.suffix in SUFFIXES)
    problems, total = [], 0
    for name in names:
        try:
            fd, size = _open_regular(directory / name)
        except BaseUnreadable as exc:
            problems.append(str(exc))
            continue
        except OSError as exc:
            problems.append(f"{name}: {exc.strerror or exc}")
            continue
        os.close(fd)
        total += size
    if total > max_bytes:
        problems.append(f"its files hold {total} bytes, more than the {max_bytes} a base may")
    if problems:
        more = f" (and {len(problems) - PROBLEMS_SHOWN} more)" if len(problems) > PROBLEMS_SHOWN else ""
        raise BaseUnreadable("; ".join(problems[:PROBLEMS_SHOWN]) + more)
    sha, left = hashlib.sha256(), max_bytes
    for name in names:
        sha.update(name.encode())
        fd, _ = _open_regular(directory / name)  # again: a file swapped since is refused the same way
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(min(CHUNK, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise BaseUnreadable(f"{name} grew while it was read, past the {max_bytes} bytes a base may hold")
                sha.update(chunk)
    return sha.hexdigest()


def _become(uid: int, gid: int, groups: list[int]) -> None:
    """Take the user's identity for good (groups first: without root, they can no longer be set)."""
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


async def read_digest(directory: str, owner: Owner, *, max_bytes: int = MAX_BYTES,
                      timeout_s: float = TIMEOUT_S) -> str:
    """:func:`digest` of ``directory``, read by a child process as ``owner`` (dvlad being root and
    ``owner`` not; otherwise as dvlad's own user, who is ``owner`` or root), within the bounds. Raises
    :class:`BaseUnreadable` with a reason naming the directory, what was wrong and the bound."""
    where = f"its base model (policy.args.pretrained = {directory}), read as {owner.user},"
    try:
        home = pwd.getpwuid(owner.uid).pw_dir
    except KeyError:
        home = "/"
    identity = []
    if os.geteuid() == 0 and owner.uid != 0:
        groups = ",".join(map(str, os.getgrouplist(owner.user, owner.gid)))
        identity = ["--uid", str(owner.uid), "--gid", str(owner.gid), "--groups", groups]
    env = {"HOME": home, "PATH": os.defpath, **({"PYTHONPATH": os.environ["PYTHONPATH"]}
                                                 if "PYTHONPATH" in os.environ else {})}
    try:  # cwd /: nothing of the user's is on the child's import path while it is still dvlad's user
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dvlad.sharing.base_digest", "--max-bytes", str(max_bytes), *identity,
            "--", directory,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd="/", env=env, start_new_session=True)
    except OSError as exc:
        raise BaseUnreadable(f"{where} could not be read: the reader did not start: {exc}") from None
    try:
        out, err = await asyncio.wait_for(child.communicate(), timeout_s)
    except TimeoutError:
        raise BaseUnreadable(f"{where} was not read within {timeout_s:g} s, the bound on reading a base") from None
    finally:
        if child.returncode is None:  # timed out, or the job went (cancelled) while it was read
            child.kill()  # SIGKILL ends a read blocked on NFS too (its waits are killable)
            await child.wait()
    if child.returncode != 0:
        raise BaseUnreadable(f"{where} could not be read: {err.decode(errors='replace').strip()[-1000:]}")
    return out.decode().strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print the content digest of a pretrained base directory.")
    p.add_argument("directory")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--groups", default="")
    args = p.parse_args(argv)
    if args.uid is not None:
        _become(args.uid, args.gid, [int(g) for g in args.groups.split(",") if g])
    try:
        print(digest(Path(args.directory).expanduser(), args.max_bytes))
    except (BaseUnreadable, OSError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
