"""Memory sizes as people write them in a job file: ``"6GiB"``, ``"512 MiB"``, ``"1.5GB"``.

Why a module of its own: the job schema (``dvla validate``, on a laptop), the daemon's admission
and its messages all read and write the same sizes; standard library only.
"""

from __future__ import annotations

import re

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes of ``text``: a number and a unit (B, KB, MB, GB, TB in powers of 1000; KiB, MiB, GiB,
    TiB in powers of 1024; any case), e.g. ``"6GiB"``. Raises ValueError saying what is accepted."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in UNITS:
        raise ValueError(f'expected a size such as "6GiB", "512MiB" or "20GB" (units: B, KB, MB, GB, TB, '
                         f'KiB, MiB, GiB, TiB), got "{text}"')
    return int(float(match.group(1)) * UNITS[unit])


def format_size(n: float) -> str:
    """``n`` bytes in GiB with two decimals (MiB below 1 GiB), as messages show sizes."""
    if abs(n) < 2**30:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 2**30:.2f} GiB"


def describe_pools(summary: dict) -> str:
    """The GPU pools of a finished job's ``summary.json`` as the end of its one-line reason: each
    pool's measured peak, its estimate and its budget; "" for a job without GPU pools."""
    pools = summary.get("gpu_memory")
    if not isinstance(pools, dict):
        return ""
    parts = []
    for name, key in (("weight pool", "weight_pool"), ("activation pool", "activation_pool")):
        pool = pools.get(key) or {}
        if pool.get("peak") is None:
            continue
        estimate = "none" if pool.get("estimate") is None else format_size(pool["estimate"])
        budget = "none" if pool.get("budget") is None else format_size(pool["budget"])
        parts.append(f"{name} peak {format_size(pool['peak'])} (estimate {estimate}, budget {budget})")
    return "; " + ", ".join(parts) if parts else ""
