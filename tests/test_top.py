"""``dvla top`` as a person meets it: a real dvlad (replaying the recorded H100), real jobs, the monitor
running in tmux, keys pressed and the pane read back; plus the pure rules behind what it shows."""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from dvla import sdk
from dvla.top.poller import Poller, RateMeter
from dvla.top.render import gpu_table
from dvla.top.snapshot import build, job_row, pick_selected
from dvlad.runtime.jobfiles import metrics_rows
from dvlad.testing import FIXTURE, LONG, PYTHON, ROOT

H100 = "NVIDIA H100 80GB HBM3"
GIB = 1 << 30
FIXTURE_GPUS = {"source": "fixture", "host": "lab1", "gpus": [
    {"index": 0, "name": H100, "uuid": "GPU-x", "utilization": None, "memory_used": None, "memory_total": 80 * GIB,
     "temperature": None, "power_draw": None, "power_limit": None, "job": None}]}
JOBS = [{"id": 1, "user": "ann", "name": "a", "state": "succeeded", "priority": 0, "gpus": 0, "gpu_ids": [],
         "started_at": 100.0, "ended_at": 160.0},
        {"id": 2, "user": "bob", "name": "b", "state": "running", "priority": 5, "gpus": 1, "gpu_ids": [0],
         "started_at": 200.0, "ended_at": None},
        {"id": 3, "user": "ann", "name": "c", "state": "queued", "priority": 0, "gpus": 2, "gpu_ids": [],
         "started_at": None, "ended_at": None}]


def text_of(renderable: object) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


# -- the pure rules ------------------------------------------------------------------------------------


def test_selection_keeps_the_chosen_job_else_the_newest_running_one():
    assert pick_selected(JOBS, 1) == 1
    assert pick_selected(JOBS, 99) == 2  # gone: the running one, not merely the newest
    assert pick_selected([j for j in JOBS if j["state"] != "running"], None) == 3
    assert pick_selected([], 5) is None


def test_queue_rows_runtime_and_gpus():
    rows = [job_row(j, now=230.0) for j in JOBS]
    assert [r.runtime_s for r in rows] == [60.0, 30.0, None]  # ended: to its end; running: to now; queued: none
    assert [r.gpus for r in rows] == ["-", "0", "(2)"]  # held indices, or how many a queued job asks for


def test_a_recorded_topology_shows_dashes_and_says_so_never_invented_numbers():
    snap = build(JOBS, FIXTURE_GPUS, 2, [], now=230.0)
    assert snap.notes == ("no NVML: recorded topology",)
    gpu = snap.gpus[0]
    assert gpu.utilization is None and gpu.pools is None and gpu.name == H100
    shown = text_of(gpu_table(snap))
    assert H100 in shown and "–/80.0 GiB" in shown and "pools n/a" in shown and "–/– W" in shown
    assert build([], {"source": "none", "host": "lab1", "gpus": []}, None, [], 0).notes == ("no GPUs on lab1",)


def test_memory_splits_into_pools_only_for_the_selected_job_that_reports_them():
    live = {"source": "nvml", "host": "lab1", "gpus": [
        {**FIXTURE_GPUS["gpus"][0], "utilization": 87.0, "memory_used": 30 * GIB, "temperature": 61.0,
         "power_draw": 420.0, "power_limit": 700.0, "job": {"id": 2, "user": "bob", "name": "b"}}]}
    rows = [{"gpu_weight_bytes": 9 * GIB, "gpu_activation_bytes": 1 * GIB},
            {"gpu_weight_bytes": 16 * GIB, "gpu_activation_bytes": 10 * GIB, "env_steps_per_s": 5.0}]
    pools = build(JOBS, live, 2, rows, 230.0).gpus[0].pools
    assert pools is not None and (pools.weight, pools.activation, pools.other) == (16 * GIB, 10 * GIB, 4 * GIB)
    assert build(JOBS, live, 1, rows, 230.0).gpus[0].pools is None  # rows of another job: not this GPU's
    assert build(JOBS, live, 2, [{"env_steps_per_s": 5.0}], 230.0).gpus[0].pools is None  # not reported
    shown = text_of(gpu_table(build(JOBS, live, 2, rows, 230.0)))
    assert "weight 16.0 GiB · act 10.0 GiB · other 4.0 GiB" in shown and "#2 bob/b" in shown and "87%" in shown


def test_the_selected_jobs_lanes_staleness_and_series():
    rows = [{"success_rate": 0.1, "env_steps_per_s": 100.0, "sample_busy": 0.5},
            {"success_rate": 0.3, "env_steps_per_s": 120.0, "sample_busy": 0.9, "sample_items_per_s": 118.0,
             "queue_depth": 3.0, "staleness_mean": 0.5, "staleness_max": 2.0}]
    detail = build(JOBS, FIXTURE_GPUS, 2, rows, 230.0).detail
    assert detail is not None and detail.id == 2
    sample = detail.lanes[0]
    assert [lane.name for lane in detail.lanes] == ["sample", "infer", "learn", "distribute"]
    assert (sample.busy, sample.items_per_s, detail.lanes[1].busy) == (0.9, 118.0, None)
    assert (detail.queue_depth, detail.staleness_mean, detail.staleness_max) == (3.0, 0.5, 2.0)
    assert detail.success_rate == (0.1, 0.3) and detail.env_steps_per_s == (100.0, 120.0)


def test_rate_meter_counts_polls_per_second_over_its_window():
    meter = RateMeter(window_s=5.0)
    assert meter.tick(0.0) == 0.0
    rates = [meter.tick(0.5 * i) for i in range(1, 21)]
    assert rates[-1] == pytest.approx(2.0)


def test_a_daemon_that_is_not_there_is_reported_with_where_not_raised(tmp_path):
    with sdk.Client(str(tmp_path / "nothing.sock")) as client:
        snap = Poller(client).poll(None)
    assert snap.error == f"daemon unreachable: unix://{tmp_path / 'nothing.sock'} (from the host argument)"


def test_metrics_tail_reads_just_the_rows_asked_for(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with path.open("w") as f:
        for i in range(3000):
            f.write(json.dumps({"version": i, "pad": "x" * 900}) + "\n")
        f.write('{"version": 30')  # a row being written
    assert [r["version"] for r in metrics_rows(path, last=60)] == list(range(2940, 3000))
    assert len(metrics_rows(path)) == 3000 and metrics_rows(path, last=5000)[0]["version"] == 0


def test_importing_top_pulls_no_torch_or_dvlad():
    code = ("import dvla.top.app, dvla.top.__main__, sys; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'dvlad')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the monitor in a terminal -------------------------------------------------------------------------

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Pane:
    """``dvla top`` (as ``python -m dvla.cli top``) in a detached 160x50 tmux session of a private
    tmux server."""

    def __init__(self, args: str, tmp: Path):
        self.server, self.exit_file = f"dvla-top-test-{os.getpid()}-{tmp.name}", tmp / "exit-status"
        self.conf = tmp / "tmux.conf"
        self.conf.write_text("set -g default-size 160x50\n")
        # pytest exports COLUMNS=80 LINES=24, which would win over the pane's real size
        command = f"env -u COLUMNS -u LINES {PYTHON} -m dvla.cli top {args}; echo $? > {self.exit_file}; sleep 60"
        self.tmux("new-session", "-d", "-x", "160", "-y", "50", "-c", str(ROOT), command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.server, "-f", str(self.conf), *args], check=True,
                              capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def wait(self, what: str, ok: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if ok(screen):
                return screen
            assert time.monotonic() < deadline, f"no {what} within {timeout} s; the screen:\n{screen}"
            time.sleep(0.2)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.tmux("kill-server")


@contextlib.contextmanager
def pane(args: str, tmp: Path) -> Iterator[Pane]:
    p = Pane(args, tmp)
    try:
        yield p
    finally:
        p.close()


def selected_job(screen: str) -> int:
    found = re.search(r"^│job (\d+) · ", screen, re.M)
    assert found, screen
    return int(found.group(1))


@pytest.fixture(scope="module")
def daemon(module_dvlads):
    return module_dvlads("[node]\ncpu_slots = 4\n", recorded_gpu=True)


@pytest.mark.slow
@needs_tmux
@pytest.mark.skipif(not FIXTURE.exists(), reason=f"the recorded topology {FIXTURE} is not in this checkout")
def test_top_shows_gpus_queue_lanes_and_answers_keys(daemon, tmp_path):
    client = sdk.Client(daemon.socket)
    spec = {**LONG, "train": {**LONG["train"], "total_env_steps": 300_000}}
    first = client.submit({**spec, "job": {"name": "top-first"}})
    second = client.submit({**spec, "job": {"name": "top-second"}})
    try:
        with pane(f"--host {daemon.socket}", tmp_path) as top:
            screen = top.wait("GPUs, both jobs and the lanes with figures", lambda s: (
                H100 in s and "top-first" in s and "top-second" in s and "no NVML: recorded topology" in s
                and re.search(r"^│distribute +[\d.]+ ", s, re.M) is not None), timeout=60)
            for lane in ("sample", "infer", "learn", "distribute"):
                assert re.search(rf"^│{lane} +[\d,.]+ +\d+%", screen, re.M), screen
            assert re.search(r"staleness mean [\d.]+ max \d+", screen) and "success rate" in screen
            assert selected_job(screen) == second.id  # the newest running job

            top.keys("k")
            top.wait("the selection on the first job", lambda s: selected_job(s) == first.id)
            top.keys("j")
            top.wait("the selection back on the second job", lambda s: selected_job(s) == second.id)

            top.keys("l")
            top.wait("the log of the second job", lambda s: f"log of job {second.id}" in s and "steps/s" in s)
            top.keys("Escape")
            top.wait("the main screen again", lambda s: "distribute" in s and "log of job" not in s)

            top.keys("?")
            top.wait("the help", lambda s: "follow the selected job's log" in s)
            top.keys("Escape")  # then wait: escape and a key at once read as alt+key
            top.wait("the help gone", lambda s: "follow the selected job's log" not in s)
            top.keys("c")
            top.wait("the cancel question", lambda s: f"Cancel job {second.id} (top-second)?" in s)
            top.keys("n")
            top.wait("the question gone", lambda s: "Cancel job" not in s)
            assert client.job(second.id)["state"] == "running"
            top.keys("c")
            top.wait("the cancel question", lambda s: "Cancel job" in s)
            top.keys("y")
            top.wait("the cancel acknowledged", lambda s: f"job {second.id}: cancelling" in s)
            assert client.job(second.id)["state"] in {"cancelling", "cancelled"}
            daemon.wait_state(second.id, {"cancelled"}, timeout=30)
            top.keys("c")
            top.wait("the cancel question", lambda s: "Cancel job" in s)
            top.keys("y")
            top.wait("the daemon's refusal", lambda s: f"job {second.id} not cancelled:" in s and "cancelled" in s)

            top.keys("q")
            deadline = time.monotonic() + 15
            while not top.exit_file.exists():
                assert time.monotonic() < deadline, top.screen()
                time.sleep(0.1)
            assert top.exit_file.read_text().strip() == "0"
    finally:
        for job in (first, second):
            with contextlib.suppress(sdk.Conflict):
                client.cancel(job.id)
        client.close()


@pytest.mark.slow
@needs_tmux
def test_top_over_tcp_on_a_node_without_gpus_survives_its_daemon_going_away(tmp_path, dvlads):
    empty = tmp_path / "no-gpus.json"  # a recorded node without GPUs: the same on a GPU machine
    empty.write_text(json.dumps({"host": "cpu-node", "devices": [], "pairs": []}))
    lone = dvlads(env={"DVLAD_FAKE_TOPOLOGY": str(empty)}, start=False)
    port = lone.serve_tcp(f"top-token {getpass.getuser()}\n")
    lone.start()
    with pane(f"--host 127.0.0.1:{port} --token top-token", tmp_path) as top:
        top.wait("the no-GPU note", lambda s: "no GPUs on cpu-node" in s and "0 jobs" in s)
        lone.stop()
        top.wait("the unreachable daemon", lambda s: f"daemon unreachable: http://127.0.0.1:{port}" in s)
        lone.start()
        top.wait("the daemon back", lambda s: "unreachable" not in s and "no GPUs on cpu-node" in s)
