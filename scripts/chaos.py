"""Inject faults into real jobs through a real dvlad and count what survives.

Each round injects one fault: kill -9 of the daemon during concurrent submits (then restarts it and
checks every acknowledged submit is in its store), kill -9 of a job's leader, of one of its env
workers, of its learner; an env that crashes (SIGSEGV) and one that hangs on every step. Before and
after every round it counts the /dev/shm segments of the daemon's jobs (every one is named after its
job: dvlad/segments.py); after, none may be left. Prints a table (fault, rounds, outcome) and, with
--json, a last line of JSON. docs/reliability.md quotes its figures.

    .venv/bin/python scripts/chaos.py --rounds 3 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from dvlad.segments import count, daemon_tag, owner_prefix
from dvlad.testing import LONG, Dvlad

FAULTY = "dvlad.envs.faulty:make"
ENDED = {"succeeded", "failed", "cancelled"}


@dataclass
class Tally:
    fault: str
    expected: str
    rounds: int = 0
    as_expected: int = 0
    leaked_segments: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def _submit(d: Dvlad, spec: dict) -> int:
    status, body = d.call("POST", "/v1/jobs", {"spec": spec})
    if status != 201:
        raise RuntimeError(f"submit: {status} {body}")
    return body["job"]["id"]


def _running_with_segments(d: Dvlad, spec: dict) -> dict:
    """Submit ``spec`` and wait until it trains (a metrics row: its first update) with its shared memory."""
    job_id = _submit(d, spec)
    prefix = f"{owner_prefix(daemon_tag(d.state_dir))}{job_id}-"

    def under_way() -> bool:
        if d.job(job_id)["state"] in ENDED:
            raise RuntimeError(f"job {job_id} ended before the fault: {d.job(job_id)['reason']}")
        return count(prefix).count >= 3 and bool(d.call("GET", f"/v1/jobs/{job_id}/metrics")[1]["rows"])
    _wait(under_way, 180, f"job {job_id} did not get under way")
    return d.job(job_id)


def _process_named(leader: int, name: str) -> psutil.Process:
    def find() -> psutil.Process | None:
        try:
            return next((p for p in psutil.Process(leader).children(recursive=True) if p.name() == name), None)
        except psutil.Error:
            return None
    return _wait(find, 60, f"no process {name} under {leader}")  # type: ignore[return-value]


def _faulty(fault: str, **env: object) -> dict:
    spec = json.loads(json.dumps(LONG))
    spec["job"]["name"] = f"chaos-{fault}"
    spec["env"].update(name=FAULTY, **env)
    spec["env"]["args"].update(fault=fault, after_steps=3)
    return spec


def _settle(d: Dvlad) -> None:
    """Cancel what is left and wait until every job has ended."""
    for job in d.jobs():
        if job["state"] not in ENDED:
            d.call("POST", f"/v1/jobs/{job['id']}/cancel")
    _wait(lambda: all(j["state"] in ENDED for j in d.jobs()), 120,
          "jobs still active")


def _leftover(prefix: str, wait_s: float = 10.0) -> int:
    """Segments under ``prefix`` once dvlad has had ``wait_s`` to remove them (it does within a poll)."""
    deadline = time.monotonic() + wait_s
    while count(prefix).count and time.monotonic() < deadline:
        time.sleep(0.1)
    return count(prefix).count


def _reclaimed(d: Dvlad) -> int:
    """The segments of ended jobs dvlad removed (its /metrics counter, since its last start)."""
    text = d.call("GET", "/metrics")[1]
    line = next(line for line in text.splitlines() if line.startswith("dvlad_shm_reclaimed_segments_total"))
    return int(float(line.split()[-1]))


def kill_daemon_during_submits(d: Dvlad, tally: Tally) -> bool:
    acknowledged: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        spec = json.loads(json.dumps(LONG))
        while not stop.is_set():
            try:
                status, body = d.call("POST", "/v1/jobs", {"spec": spec}, timeout=10)
            except OSError:
                time.sleep(0.05)
                continue
            if status == 201:
                with lock:
                    acknowledged.append(body["job"]["id"])
    clients = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for c in clients:
        c.start()
    time.sleep(random.uniform(0.5, 2.0))
    d.kill9()
    stop.set()
    for c in clients:
        c.join(15)
    d.start()
    lost = [job_id for job_id in acknowledged if d.call("GET", f"/v1/jobs/{job_id}")[0] != 200]
    in_store = len(d.jobs()) - tally.extra.get("in_store", 0)
    tally.extra["in_store"] = tally.extra.get("in_store", 0) + in_store  # ≥ acknowledged: a commit whose reply was cut
    tally.extra["acknowledged"] = tally.extra.get("acknowledged", 0) + len(acknowledged)
    tally.extra["lost"] = tally.extra.get("lost", 0) + len(lost)
    _settle(d)
    return not lost


def kill_job_leader(d: Dvlad, tally: Tally) -> bool:
    job = _running_with_segments(d, LONG)
    os.kill(job["pid"], signal.SIGKILL)
    ended = d.wait_state(job["id"], ENDED, timeout=60)
    tally.notes.append(ended["reason"])
    return ended["state"] == "failed" and "SIGKILL" in ended["reason"]


def kill_env_worker(d: Dvlad, tally: Tally) -> bool:
    job = _running_with_segments(d, LONG)
    os.kill(_process_named(job["pid"], "dvla-env-0").pid, signal.SIGKILL)
    time.sleep(5)  # the pool replaces it: the job goes on
    alive = d.job(job["id"])["state"] == "running"
    steps = lambda: d.call("GET", f"/v1/jobs/{job['id']}/metrics")[1]["rows"][-1]["env_steps"]  # noqa: E731
    before = steps()
    progressed = bool(_wait(lambda: steps() > before, 60, "no progress after the replacement"))
    d.call("POST", f"/v1/jobs/{job['id']}/cancel")
    d.wait_state(job["id"], ENDED, timeout=60)
    return alive and progressed


def kill_learner(d: Dvlad, tally: Tally) -> bool:
    job = _running_with_segments(d, LONG)
    os.kill(_process_named(job["pid"], "dvla-learner-0").pid, signal.SIGKILL)
    ended = d.wait_state(job["id"], ENDED, timeout=120)
    tally.notes.append(ended["reason"])
    return ended["state"] == "failed" and "learner" in ended["reason"] and "SIGKILL" in ended["reason"]


def crashing_env(d: Dvlad, tally: Tally) -> bool:
    job_id = _submit(d, _faulty("segfault", max_worker_replacements=2))
    ended = d.wait_state(job_id, ENDED, timeout=240)
    tally.notes.append(ended["reason"])
    return ended["state"] == "failed" and "SIGSEGV" in ended["reason"]


def hanging_env(d: Dvlad, tally: Tally) -> bool:
    job_id = _submit(d, _faulty("hang", max_worker_replacements=1, step_timeout_s=2.0))
    ended = d.wait_state(job_id, ENDED, timeout=240)
    tally.notes.append(ended["reason"])
    return ended["state"] == "failed" and "did not answer a step within 2 s" in ended["reason"]


FAULTS: list[tuple[str, str, Callable[[Dvlad, Tally], bool]]] = [
    ("kill -9 dvlad during submits", "restarted; every acknowledged job kept", kill_daemon_during_submits),
    ("kill -9 job leader", "job failed: killed by signal SIGKILL", kill_job_leader),
    ("kill -9 env worker", "worker replaced; job runs on", kill_env_worker),
    ("kill -9 learner", "job failed: learner killed by SIGKILL", kill_learner),
    ("env segfaults every step", "job failed: names env and SIGSEGV", crashing_env),
    ("env hangs every step", "job failed: names env and step timeout", hanging_env),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each fault (default 3)")
    parser.add_argument("--only", help="run only the faults whose name contains this")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = parser.parse_args(argv)
    tallies = []
    for name, expected, inject in FAULTS:
        if args.only and args.only not in name:
            continue
        tally = Tally(name, expected)
        d = Dvlad("[node]\ncpu_slots = 1\n").start()
        prefix = owner_prefix(daemon_tag(d.state_dir))
        t0 = time.monotonic()
        try:
            for _ in range(args.rounds):
                before = count(prefix).count
                try:
                    ok = inject(d, tally)
                except Exception as exc:  # a round that could not be run counts as not as expected
                    tally.notes.append(f"{type(exc).__name__}: {exc}")
                    ok = False
                _settle(d)
                leaked = _leftover(prefix)
                tally.leaked_segments += leaked
                tally.rounds += 1
                tally.as_expected += ok and before == 0 and leaked == 0
                print(f"  {name}: round {tally.rounds}: {'ok' if ok else 'NOT AS EXPECTED'}, segments before "
                      f"{before}, after {leaked}" + (f" ({tally.notes[-1]})" if tally.notes else ""), flush=True)
        finally:
            tally.seconds = time.monotonic() - t0
            with contextlib.suppress(OSError, StopIteration):  # a daemon that is down has no figure
                tally.extra["shm_reclaimed_by_dvlad"] = _reclaimed(d)
            d.close()
        tallies.append(tally)
    print(f"\n{'fault':32} {'rounds':>6} {'as expected':>11} {'shm leaked':>10}  outcome")
    for t in tallies:
        extra = (f" (acknowledged jobs lost: {t.extra['lost']} of {t.extra['acknowledged']}; "
                 f"{t.extra['in_store']} in the store)"
                 if "acknowledged" in t.extra else "")
        print(f"{t.fault:32} {t.rounds:>6} {t.as_expected:>11} {t.leaked_segments:>10}  {t.expected}{extra}")
    if args.json:
        print(json.dumps({"rounds": args.rounds, "faults": [
            {"fault": t.fault, "rounds": t.rounds, "as_expected": t.as_expected, "shm_leaked": t.leaked_segments,
             "seconds": round(t.seconds, 1), **t.extra, "reasons": sorted(set(t.notes))[:3]} for t in tallies]}))
    return 0 if all(t.as_expected == t.rounds and not t.leaked_segments for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
