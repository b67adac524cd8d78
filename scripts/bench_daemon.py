"""dvlad's API under load: N concurrent clients submitting and listing for a fixed time.

Starts a real ``dvlad`` (from this venv) on a Unix socket in a temporary directory with
``limits.default.running_jobs = 0``, so every submitted job stays queued and the figures are the
API's (decode, validate with the job schema, SQLite commit with fsync, reply), not training's.
Each client is a coroutine on one aiohttp Unix-socket session that alternates, in the ratio
``--submit-ratio``, durable submits (each with a fresh idempotency key) and ``GET /v1/jobs?limit=100``.
Clients run in this process, so on a small machine they share the cores with the daemon.

Prints requests/s and p50/p99 latency overall and per operation; ``--json`` adds one JSON line last.

    python scripts/bench_daemon.py --clients 8 --seconds 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dvlad.testing import Dvlad

SPEC = {"job": {"name": "bench"}, "env": {"name": "reach", "num_envs": 4, "groups": 2, "workers": 1}}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def client(session: aiohttp.ClientSession, stop_at: float, ratio: float, lat: dict[str, list[float]],
                 errors: list[str]) -> None:
    credit = 0.0
    while time.monotonic() < stop_at:
        credit += ratio
        op = "submit" if credit >= 1.0 else "list"
        credit -= 1.0 if op == "submit" else 0.0
        t0 = time.perf_counter()
        if op == "submit":
            body = {"spec": SPEC, "idempotency_key": uuid.uuid4().hex}
            async with session.post("http://dvlad/v1/jobs", json=body) as resp:
                await resp.read()
                ok = resp.status == 201
        else:
            async with session.get("http://dvlad/v1/jobs?limit=100") as resp:
                await resp.read()
                ok = resp.status == 200
        lat[op].append(time.perf_counter() - t0)
        if not ok:
            errors.append(f"{op}: HTTP {resp.status}")


async def run(sock: str, clients: int, seconds: float, ratio: float) -> dict:
    lat: dict[str, list[float]] = {"submit": [], "list": []}
    errors: list[str] = []
    connector = aiohttp.UnixConnector(path=sock, limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm_until = time.monotonic() + 1.0
        await asyncio.gather(*(client(session, warm_until, ratio, {"submit": [], "list": []}, errors)
                               for _ in range(clients)))
        t0 = time.monotonic()
        await asyncio.gather(*(client(session, t0 + seconds, ratio, lat, errors) for _ in range(clients)))
        wall = time.monotonic() - t0
    out = {"clients": clients, "seconds": round(wall, 2), "submit_ratio": ratio, "errors": len(errors),
           "cores": os.cpu_count(), "machine": platform.machine()}
    every = sorted(lat["submit"] + lat["list"])
    out["requests_per_s"] = round(len(every) / wall, 1)
    out["p50_ms"], out["p99_ms"] = round(percentile(every, 0.5) * 1e3, 2), round(percentile(every, 0.99) * 1e3, 2)
    for op, values in lat.items():
        values.sort()
        out[op] = {"count": len(values), "per_s": round(len(values) / wall, 1),
                   "p50_ms": round(percentile(values, 0.5) * 1e3, 2),
                   "p99_ms": round(percentile(values, 0.99) * 1e3, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--submit-ratio", type=float, default=0.5, help="fraction of requests that submit")
    parser.add_argument("--socket", help="an already running dvlad (default: start one in a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    args = parser.parse_args()
    daemon = None if args.socket else Dvlad("[limits.default]\nrunning_jobs = 0\n").start()
    try:
        result = asyncio.run(run(args.socket or daemon.socket, args.clients, args.seconds, args.submit_ratio))
    finally:
        if daemon is not None:
            daemon.close()
    print(f"{result['clients']} clients, {result['seconds']} s, {result['cores']} cores: "
          f"{result['requests_per_s']} requests/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"{result['errors']} errors")
    for op in ("submit", "list"):
        r = result[op]
        print(f"  {op:7s} {r['per_s']:8.1f}/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  ({r['count']})")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
