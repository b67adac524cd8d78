"""dvlad's API under load: many concurrent clients, and a long queue.

Each measurement starts a real ``dvlad`` (from this venv) in a temporary directory with
``limits.default.running_jobs = 0``, so every submitted job stays queued and the figures are the
API's and the scheduler's, not training's.

* **Clients** (default): ``--clients`` coroutines, each on its own connection, over the Unix socket
  and/or loopback TCP with a bearer token (``--transport``), for ``--seconds``. Each request is, at
  random in the given ratios, a status GET (``GET /v1/jobs/ID``: what ``dvla status`` sends), a
  durable submit (a fresh idempotency key each) or a listing (``GET /v1/jobs``, its default page).
  Between two requests a client waits ``--think-ms`` on average (default 1000: 1000 clients each
  polling once a second). ``--think-ms 0`` is a closed loop: each client sends its next request as
  soon as the last is answered, so the mean latency is clients / throughput whatever the daemon
  does (1000 clients at 455 requests/s wait 2.2 s on average); it measures throughput, not latency.
* **Queued** (``--queued N``): N jobs queued through the API, then for ``--seconds`` one submit every
  0.5 s (each kicks a scheduling pass over the whole queue) while a prober times status GETs back to
  back and a lister times listings. Reports their latency; the prober's worst (a request that meets
  the event loop held waits that long); and the daemon's own figures from ``/metrics`` where it has
  them: the last pass's wall time and queue, and the event loop's worst lag over the last 15 s (the
  delay of a 50 ms timer: how long anything held the loop; all inside the kicks when ``--seconds``
  is 15 or more).

``--compare DIR`` runs the same measurement first against the ``dvlad`` package of another checkout
(e.g. ``git worktree add --detach /tmp/before main``; run with this venv), then against this one:
before and after in one run. Clients run in this process: on a small machine they share the cores
with the daemon. Prints the figures; ``--json`` adds them as one JSON line last.

    python scripts/bench_daemon.py --clients 1000 --seconds 60 --transport both --json
    python scripts/bench_daemon.py --queued 10000 --seconds 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import pwd
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dvlad.server.looplag import LoopLag
from dvlad.testing import Dvlad

CONFIG = "[limits.default]\nrunning_jobs = 0\n"
"""Every job stays queued: the figures are the API's and the scheduler's."""
SPEC = {"job": {"name": "bench"}, "env": {"name": "reach", "num_envs": 4, "groups": 2, "workers": 1}}
TOKEN = "bench-token"
KICK_S = 0.5
"""The queued measurement's submit period: each submit kicks a scheduling pass."""
FILL_CONCURRENCY = 64
DAEMON_GAUGES = ("dvlad_schedule_pass_seconds", "dvlad_schedule_pass_queued", "dvlad_event_loop_lag_max_seconds")

Latencies = dict[str, list[float]]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summary(values: list[float], wall: float) -> dict[str, Any]:
    """Count, rate and p50/p99/max in milliseconds."""
    values = sorted(values)
    ms = {name: round(percentile(values, q) * 1e3, 2) for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99))}
    return {"count": len(values), "per_s": round(len(values) / wall, 1), **ms,
            "max_ms": round(values[-1] * 1e3, 2) if values else float("nan")}


class Api:
    """One aiohttp session to a dvlad over its Unix socket or loopback TCP; each call records its
    latency under its operation and counts what failed, by operation and why."""

    def __init__(self, daemon: Dvlad, transport: str, port: int | None, connections: int):
        if transport == "tcp":
            connector = aiohttp.TCPConnector(limit=connections)
            self.base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
        else:
            connector = aiohttp.UnixConnector(path=daemon.socket, limit=connections)
            self.base, headers = "http://dvlad", {}
        self.session = aiohttp.ClientSession(connector=connector, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=60))
        self.errors: collections.Counter[str] = collections.Counter()

    async def call(self, lat: Latencies, op: str, method: str, path: str, body: Any = None,
                   expect: int = 200) -> Any:
        t0 = time.perf_counter()
        try:
            async with self.session.request(method, self.base + path, json=body) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            lat.setdefault(op, []).append(time.perf_counter() - t0)
            self.errors[f"{op}: {type(exc).__name__}: {exc}"[:120]] += 1
            return None
        lat.setdefault(op, []).append(time.perf_counter() - t0)
        if status != expect:
            self.errors[f"{op}: HTTP {status}"] += 1
            return None
        return payload

    async def submit(self, lat: Latencies) -> int | None:
        body = {"spec": SPEC, "idempotency_key": uuid.uuid4().hex}
        payload = await self.call(lat, "submit", "POST", "/v1/jobs", body, expect=201)
        return json.loads(payload)["job"]["id"] if payload else None

    async def status(self, lat: Latencies, job_id: int) -> dict[str, Any] | None:
        payload = await self.call(lat, "status", "GET", f"/v1/jobs/{job_id}")
        return json.loads(payload) if payload else None

    async def list(self, lat: Latencies) -> None:
        await self.call(lat, "list", "GET", "/v1/jobs")

    async def gauges(self) -> dict[str, float | None]:
        """The daemon's own scheduling and event-loop figures (None where it has none: an older dvlad)."""
        async with self.session.get(self.base + "/metrics") as resp:
            text = await resp.text()
        found = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith(DAEMON_GAUGES))
        return {name: float(found[name]) if name in found else None for name in DAEMON_GAUGES}

    async def close(self) -> None:
        await self.session.close()


async def until(stop_at: float, step: Callable[[], Awaitable[None]], pause: float) -> None:
    while time.monotonic() < stop_at:
        await step()
        await asyncio.sleep(pause)


async def fill(api: Api, n: int) -> tuple[list[int], float]:
    """Queue ``n`` jobs through the API, ``FILL_CONCURRENCY`` at a time; their ids and the seconds taken."""
    ids: list[int] = []
    left = iter(range(n))
    t0 = time.monotonic()

    async def worker() -> None:
        for _ in left:
            if (job_id := await api.submit({})) is not None:
                ids.append(job_id)

    await asyncio.gather(*(worker() for _ in range(min(n, FILL_CONCURRENCY))))
    return sorted(ids), time.monotonic() - t0


async def clients(api: Api, n: int, seconds: float, ratios: dict[str, float], think: float) -> dict[str, Any]:
    ids, _ = await fill(api, 100)  # jobs for the status GETs to read
    ops, weights = list(ratios), list(ratios.values())

    async def client(rng: random.Random, stop_at: float, lat: Latencies) -> None:
        await asyncio.sleep(rng.uniform(0, think))  # spread the clients' first requests over one think time
        while time.monotonic() < stop_at:
            op = rng.choices(ops, weights)[0]
            if op == "status":
                await api.status(lat, rng.choice(ids))
            elif op == "submit":
                await api.submit(lat)
            else:
                await api.list(lat)
            if think:
                await asyncio.sleep(min(think * rng.uniform(0.5, 1.5), max(0.0, stop_at - time.monotonic())))

    warm_until = time.monotonic() + max(1.0, think)
    await asyncio.gather(*(client(random.Random(i), warm_until, {}) for i in range(n)))
    api.errors.clear()
    lat: Latencies = {op: [] for op in ops}
    own_lag = LoopLag(window_s=seconds + 1)  # the clients' own loop: a late client inflates what it measures
    watch = asyncio.create_task(own_lag.run())
    t0 = time.monotonic()
    await asyncio.gather(*(client(random.Random(n + i), t0 + seconds, lat) for i in range(n)))
    wall = time.monotonic() - t0
    watch.cancel()
    every = [v for values in lat.values() for v in values]
    return {"clients": n, "think_ms": think * 1e3, "ratios": ratios, "seconds": round(wall, 2),
            "requests_per_s": round(len(every) / wall, 1), "all": summary(every, wall),
            **{op: summary(values, wall) for op, values in lat.items()},
            "clients_loop_lag_max_ms": round(own_lag.worst() * 1e3, 1), "daemon": await api.gauges(),
            "errors": sum(api.errors.values()), "error_kinds": dict(api.errors)}


async def queued(api: Api, n: int, seconds: float) -> dict[str, Any]:
    ids, fill_s = await fill(api, n)
    t0, last = time.monotonic(), None
    while time.monotonic() - t0 < 300:  # until a pass has seen the whole queue (its newest job has a reason)
        last = await api.status({}, ids[-1])
        if last and last["pending_reason"]:
            break
        await asyncio.sleep(0.1)
    first_pass_s = time.monotonic() - t0
    lat: Latencies = {"status": [], "list": [], "submit": []}
    stop_at = time.monotonic() + seconds
    rng = random.Random(0)

    async def kick() -> None:
        await api.submit(lat)

    async def probe() -> None:
        await api.status(lat, rng.choice(ids))

    async def list_() -> None:
        await api.list(lat)

    api.errors.clear()
    started = time.monotonic()
    await asyncio.gather(until(stop_at, kick, KICK_S), until(stop_at, probe, 0.01), until(stop_at, list_, 0.05))
    wall = time.monotonic() - started
    return {"queued": len(ids), "fill_s": round(fill_s, 1), "fill_submits_per_s": round(len(ids) / fill_s, 1),
            "first_pass_seen_s": round(first_pass_s, 2), "seconds": round(wall, 2),
            **{op: summary(values, wall) for op, values in lat.items()},
            "daemon": await api.gauges(), "errors": sum(api.errors.values()), "error_kinds": dict(api.errors)}


async def measure(args: argparse.Namespace, source: Path | None, transport: str) -> dict[str, Any]:
    daemon = Dvlad(CONFIG, source=source)
    port = daemon.serve_tcp(f"{TOKEN} {pwd.getpwuid(os.geteuid()).pw_name}\n") if transport == "tcp" else None
    daemon.start()
    api = Api(daemon, transport, port, max(args.clients, FILL_CONCURRENCY) + 4)
    try:
        if args.queued:
            out = await queued(api, args.queued, args.seconds)
        else:
            ratios = {"status": 1.0 - args.submit_ratio - args.list_ratio, "submit": args.submit_ratio,
                      "list": args.list_ratio}
            out = await clients(api, args.clients, args.seconds, ratios, args.think_ms / 1e3)
    finally:
        await api.close()
        daemon.close()
    return {"dvlad": str(source) if source else "this checkout", "transport": transport, **out}


def show(r: dict[str, Any]) -> None:
    head = f"{r['dvlad']}, {r['transport']}: "
    if "queued" in r:
        print(head + f"{r['queued']} queued in {r['fill_s']} s ({r['fill_submits_per_s']} submits/s), "
              f"a pass had seen them all {r['first_pass_seen_s']} s later; then {r['seconds']} s of kicks:")
    else:
        print(head + f"{r['clients']} clients, think {r['think_ms']:.0f} ms, {r['seconds']} s: "
                     f"{r['requests_per_s']} requests/s, p50 {r['all']['p50_ms']} ms, p99 {r['all']['p99_ms']} ms; "
                     f"the clients' own event loop lagged up to {r['clients_loop_lag_max_ms']} ms")
    d = r["daemon"]
    print("  daemon: " + ("n/a (this dvlad does not say)" if d["dvlad_schedule_pass_seconds"] is None
                          else f"last pass {d['dvlad_schedule_pass_seconds'] * 1e3:.1f} ms over "
                               f"{d['dvlad_schedule_pass_queued']:.0f} jobs, event loop's worst lag (last 15 s) "
                               f"{d['dvlad_event_loop_lag_max_seconds'] * 1e3:.1f} ms"))
    for op in ("status", "submit", "list"):
        s = r[op]
        print(f"  {op:7s} {s['per_s']:8.1f}/s  p50 {s['p50_ms']:8.2f} ms  p99 {s['p99_ms']:8.2f} ms  "
              f"max {s['max_ms']:8.2f} ms  ({s['count']})")
    print(f"  errors: {r['errors']} {r['error_kinds'] or ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients (default 100)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per run (default 20)")
    parser.add_argument("--think-ms", type=float, default=1000.0,
                        help="mean pause between a client's requests; 0: a closed loop (default 1000)")
    parser.add_argument("--submit-ratio", type=float, default=0.1, help="fraction of submits (default 0.1)")
    parser.add_argument("--list-ratio", type=float, default=0.1, help="fraction of listings (default 0.1); "
                        "the rest are status GETs")
    parser.add_argument("--transport", choices=("unix", "tcp", "both"), default="unix",
                        help="the Unix socket, loopback TCP with a token, or one run of each (default unix)")
    parser.add_argument("--queued", type=int, default=0, metavar="N",
                        help="instead: queue N jobs, then time listings, status and scheduling passes")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="first measure the dvlad of this other checkout (the 'before'), then this one")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line last")
    args = parser.parse_args()
    if args.submit_ratio + args.list_ratio > 1:
        parser.error("--submit-ratio + --list-ratio must be at most 1")
    if args.compare and not (args.compare / "dvlad" / "server" / "main.py").is_file():
        parser.error(f"--compare {args.compare}: not a checkout (no dvlad/server/main.py)")
    transports = ("unix", "tcp") if args.transport == "both" else (args.transport,)
    results = []
    for source in ([args.compare.resolve()] if args.compare else []) + [None]:
        for transport in transports:
            results.append(asyncio.run(measure(args, source, transport)))
            show(results[-1])
    if args.json:
        print(json.dumps({"cores": os.cpu_count(), "machine": platform.machine(),
                          "load_avg_1m": os.getloadavg()[0], "runs": results}))


if __name__ == "__main__":
    main()
