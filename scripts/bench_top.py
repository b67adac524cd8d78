"""How much CPU does dvlad spend on ``dvla top``? Its CPU with no monitor, then with N attached.

Why measure: the monitor must refresh at 2 Hz or more without loading the daemon that schedules
everyone's jobs. This starts a real dvlad (replaying the recorded H100 when the fixture is present),
submits a small synthetic job that keeps running, measures the daemon process's own CPU (psutil,
children excluded: the job's processes are not the daemon's cost) for ``--seconds`` with no monitor,
then starts ``--monitors`` ``python -m dvla.top`` in panes of a private tmux server and measures again.
Each monitor's achieved refresh rate is read off its screen (the status line's ``(N Hz)``).

    nice -n 19 .venv/bin/python scripts/bench_top.py [--monitors 10] [--seconds 30] [--refresh 0.5]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dvlad.testing import FIXTURE, LONG, PYTHON, ROOT, Dvlad

RATE = re.compile(r"\(([\d.]+) Hz\)")


def cpu_percent(proc: psutil.Process, seconds: float) -> float:
    """The process's own CPU (user + system, one core = 100 %) over the next ``seconds``."""
    before, start = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, wall = proc.cpu_times(), time.monotonic() - start
    return 100.0 * ((after.user - before.user) + (after.system - before.system)) / wall


def tmux(server: str, conf: Path, *args: str) -> str:
    return subprocess.run(["tmux", "-L", server, "-f", str(conf), *args], check=True, capture_output=True,
                          text=True).stdout


def wait_rows(daemon: Dvlad, job_id: int, timeout: float = 90.0) -> None:
    """Until the job writes metrics: the monitors then read real rows, as they would in use."""
    deadline = time.monotonic() + timeout
    while not daemon.call("GET", f"/v1/jobs/{job_id}/metrics?last=1")[1]["rows"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} wrote no metrics in {timeout} s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monitors", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--refresh", type=float, default=0.5)
    args = parser.parse_args()

    daemon = Dvlad("[node]\ncpu_slots = 2\n", env={"DVLAD_FAKE_TOPOLOGY": str(FIXTURE)} if FIXTURE.exists() else {})
    daemon.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-top-"))
    server, conf = f"bench-top-{os.getpid()}", tmp / "tmux.conf"
    conf.write_text("set -g default-size 160x50\n")
    try:
        spec = {**LONG, "job": {"name": "bench-top"}, "train": {**LONG["train"], "total_env_steps": 300_000}}
        status, reply = daemon.call("POST", "/v1/jobs", {"spec": spec})
        assert status == 201, reply
        job_id = reply["job"]["id"]
        wait_rows(daemon, job_id)
        proc = psutil.Process(daemon.proc.pid)  # type: ignore[union-attr]
        idle = cpu_percent(proc, args.seconds)

        command = f"env -u COLUMNS -u LINES {PYTHON} -m dvla.top --host {daemon.socket} --refresh {args.refresh}"
        for i in range(args.monitors):
            tmux(server, conf, "new-session", "-d", "-s", f"m{i}", "-x", "160", "-y", "50", "-c", str(ROOT), command)
        deadline = time.monotonic() + 120
        while True:  # every monitor up and polling before the clock starts
            screens = [tmux(server, conf, "capture-pane", "-p", "-t", f"m{i}") for i in range(args.monitors)]
            rates = [RATE.search(s) for s in screens]
            if all(r and float(r.group(1)) > 0 for r in rates):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("monitors did not start:\n" + "\n".join(s[:300] for s in screens))
            time.sleep(1)
        watched = cpu_percent(proc, args.seconds)
        screens = [tmux(server, conf, "capture-pane", "-p", "-t", f"m{i}") for i in range(args.monitors)]
        hz = [float(m.group(1)) if (m := RATE.search(s)) else 0.0 for s in screens]
        rows = len(daemon.call("GET", f"/v1/jobs/{job_id}/metrics")[1]["rows"])
        daemon.call("POST", f"/v1/jobs/{job_id}/cancel")
        print(json.dumps({
            "monitors": args.monitors, "seconds": args.seconds, "refresh_s": args.refresh,
            "daemon_cpu_percent_no_monitor": round(idle, 2),
            "daemon_cpu_percent_with_monitors": round(watched, 2),
            "daemon_cpu_percent_per_monitor": round((watched - idle) / args.monitors, 2),
            "monitor_refresh_hz": hz, "job_metric_rows": rows, "cpus": os.cpu_count(),
            "gpu_source": "fixture" if FIXTURE.exists() else "none"}))
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True)
        daemon.close()


if __name__ == "__main__":
    main()
