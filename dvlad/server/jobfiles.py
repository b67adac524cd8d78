"""Reading what a job writes (its log, its metrics.jsonl) without importing the engine (torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TAIL_BYTES = 64 * 1024


def metrics_rows(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (the last ``last`` only, if given); a torn final line is skipped."""
    try:
        with path.open("rb") as f:
            if last is not None:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - TAIL_BYTES * last))
            lines = f.read().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # partial line being written, or the cut of the tail seek
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows[-last:] if last is not None else rows
