"""Which ``/dev/shm`` segments belong to which job, and reclaiming them.

Why: a job killed by SIGKILL (the OOM killer, a crash, ``kill -9``) never unlinks its shared memory,
and ``/dev/shm`` is RAM: leaked segments once grew to gigabytes and got healthy jobs OOM-killed. So
every segment a job makes (env slots, trajectory queue, weight plane; :mod:`dvlad.shm`) is named
after its job, ``dvla-<owner>-<job>-<random>``, with the prefix in :data:`PREFIX_ENV`, which every
process of the job inherits. Whoever started the job removes what is left under its prefix once the
job has ended, however it ended: dvlad (``owner`` is a tag of its state directory, so a restarted
dvlad finds the orphans of its own jobs and no other daemon's), or the job runner run by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PREFIX_ENV = "DVLA_SHM_PREFIX"
"""The environment variable holding the prefix of the job's segment names."""
_JOB_NAME = re.compile(r"dvla-(?P<owner>[0-9a-z]+)-(?P<job>[0-9]+)-[0-9a-f]+")


def daemon_tag(state_dir: Path) -> str:
    """A short tag that is the same for every start of one state directory's dvlad, and differs
    between the dvlads (tests run many) of one machine."""
    return "d" + hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]


def owner_prefix(owner: str) -> str:
    """The prefix of the names of every segment of ``owner``'s jobs."""
    return f"dvla-{owner}-"


def job_prefix(owner: str, job: int) -> str:
    """The prefix of the names of job ``job``'s segments (``owner``: :func:`daemon_tag`, or ``p``
    and the pid of a job runner run by hand)."""
    return f"{owner_prefix(owner)}{job}-"


def standalone_prefix(pid: int | None = None) -> str:
    """The prefix of a job run by hand (no daemon): its runner's pid names it."""
    return job_prefix("p", pid or os.getpid())


def new_segment_name() -> str:
    """A fresh name under this process's job prefix (a process outside any job: its own pid's)."""
    return (os.environ.get(PREFIX_ENV) or standalone_prefix()) + secrets.token_hex(6)


@dataclass(frozen=True)
class Segments:
    count: int = 0
    bytes: int = 0

    def __add__(self, other: Segments) -> Segments:
        return Segments(self.count + other.count, self.bytes + other.bytes)


def _entries(prefix: str) -> list[tuple[Path, int]]:
    """(path, size) of the regular files under ``prefix`` (a link in their place is not followed)."""
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(SHM_DIR):
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    out.append((Path(entry.path), st.st_size if stat.S_ISREG(st.st_mode) else 0))
    return out


def count(prefix: str) -> Segments:
    """How many segments (and bytes) are named under ``prefix``."""
    found = _entries(prefix)
    return Segments(len(found), sum(size for _, size in found))


def reclaim(prefix: str) -> Segments:
    """Unlink every segment named under ``prefix``; what was removed. Processes that still map one
    keep their mapping (the memory goes when the last of them does)."""
    removed = Segments()
    for path, size in _entries(prefix):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += Segments(1, size)
    return removed


def jobs_with_segments(owner: str) -> set[int]:
    """The jobs of ``owner`` that have segments in ``/dev/shm`` now."""
    jobs = set()
    for path, _ in _entries(owner_prefix(owner)):
        match = _JOB_NAME.fullmatch(path.name)
        if match and match["owner"] == owner:
            jobs.add(int(match["job"]))
    return jobs
