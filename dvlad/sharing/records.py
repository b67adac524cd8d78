"""dvlad's durable record of each base holder it started, so that a restarted dvlad re-adopts them.

Why: a holder outlives the dvlad that started it (its jobs map its memory and keep running across a
restart), but it is no child of the next dvlad, which would otherwise neither count it nor end it.
One JSON file per holder, ``STATE_DIR/holders/<name>.json``: its key, its pid and process start time
(a recycled pid is never taken for it), its directory's name and segment prefix, and the jobs that
map it. The folder is the daemon's alone (0700, files 0600): a job's user, who owns the holder's own
directory, must not be able to point dvlad at another process to signal. Each write replaces the
file by a rename, so a reader sees the old record or the new one, never half of one; no fsync, as a
crash of the machine ends the holders too.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Records:
    """The holder records of one state directory."""

    def __init__(self, state_dir: Path):
        self.root = state_dir / "holders"

    def save(self, name: str, record: dict[str, Any]) -> None:
        """Write holder ``name``'s record, replacing the one before."""
        self.root.mkdir(mode=0o700, exist_ok=True)
        path = self.root / f"{name}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{name}.json").unlink()

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, record) of each holder recorded; a file that does not read as one is dropped."""
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else ():
            try:
                record = json.loads(path.read_text())
                yield path.stem, {"key": str(record["key"]), "pid": int(record["pid"]),
                                  "start": float(record["start"]), "prefix": str(record["prefix"]),
                                  "jobs": [int(j) for j in record["jobs"]]}
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
