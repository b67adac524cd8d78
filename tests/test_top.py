"""``dvla top`` as a person meets it: a real dvlad (replaying the recorded H100), real jobs, the monitor
running in tmux, keys pressed and the pane read back; plus the pure rules behind what it shows."""

from __future__ import annotations

import asyncio
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
from rich.text import Text

from dvla import sdk
from dvla.metric_names import SUCCESS_MIN_EPISODES
from dvla.top.app import TopApp, capture
from dvla.top.poller import Poller, RateMeter
from dvla.top.render import (
    Flow,
    NodeLine,
    Sparkline,
    StatusLine,
    fit_reason,
    gpu_table,
    job_pools_cell,
    lanes_table,
    sparklines,
)
from dvla.top.snapshot import Pools, build, job_row, pick_selected
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
    assert [r.gpus for r in rows] == ["CPU", "GPU 0", "2 asked"]  # where it is placed, else how many it asks for


def test_a_recorded_topology_shows_dashes_and_says_so_never_invented_numbers():
    snap = build(JOBS, FIXTURE_GPUS, 2, [], now=230.0)
    assert snap.notes == ("no NVML: recorded topology",)
    gpu = snap.gpus[0]
    assert gpu.utilization is None and gpu.pools is None and gpu.name == H100
    shown = text_of(gpu_table(snap))
    assert H100 in shown and "–/80.0 GiB" in shown and "pools n/a" in shown and "–/– W" in shown
    assert build([], {"source": "none", "host": "lab1", "gpus": []}, None, [], 0).notes == ("no GPUs on lab1",)


def pool(used: int | None, peak: int | None = None, budget: int | None = None, estimate: int | None = None) -> dict:
    return {"used": used, "peak": peak, "budget": budget, "estimate": estimate}


def shared_gpu(*jobs: dict) -> dict:
    """A live /v1/gpus reply of one H100 30 GiB used, with ``jobs`` on it."""
    return {"source": "nvml", "host": "lab1", "gpus": [
        {**FIXTURE_GPUS["gpus"][0], "utilization": 87.0, "memory_used": 30 * GIB, "temperature": 61.0,
         "power_draw": 420.0, "power_limit": 700.0, "job": jobs[0] if jobs else None, "jobs": list(jobs)}]}


def test_memory_splits_into_the_pools_of_every_job_on_the_gpu():
    bob = {"id": 2, "user": "bob", "name": "b", "weight_pool": pool(9 * GIB), "activation_pool": pool(10 * GIB)}
    ann = {"id": 4, "user": "ann", "weight_pool": pool(7 * GIB), "activation_pool": pool(1 * GIB),
           "activation_growing": True}  # no name: bob may not read ann's job
    gpu = build(JOBS, shared_gpu(bob, ann), 2, [], 230.0).gpus[0]
    assert gpu.pools == Pools(16 * GIB, 11 * GIB, 3 * GIB, growing=True) and gpu.holder == "2 jobs"
    assert [j.label for j in gpu.jobs] == ["#2 bob/b", "#4 ann"]
    unreported = {**ann, "weight_pool": pool(None), "activation_pool": pool(None)}  # no row yet: no split
    assert build(JOBS, shared_gpu(bob, unreported), 2, [], 230.0).gpus[0].pools is None
    older = {**shared_gpu(), "gpus": [{**shared_gpu()["gpus"][0], "job": {"id": 2, "user": "bob"}}]}
    del older["gpus"][0]["jobs"]  # a daemon from before "jobs": its one holder, without pools
    assert build(JOBS, older, 2, [], 230.0).gpus[0].holder == "#2 bob"
    shown = text_of(gpu_table(build(JOBS, shared_gpu(bob, ann), 2, [], 230.0)))
    assert "weight 16.0 GiB · act 11.0 GiB ↑ · other 3.0 GiB" in shown and "2 jobs" in shown and "87%" in shown


def test_each_job_on_a_gpu_shows_its_pools_against_its_budgets_and_estimate():
    lora = {"id": 7, "user": "ann", "name": "lora-a", "weight_pool": pool(6 * GIB, 6 * GIB, 8 * GIB, int(6.5 * GIB)),
            "activation_pool": pool(20 * GIB, 27 * GIB, 30 * GIB, 25 * GIB), "activation_growing": True}
    free = {"id": 8, "user": "bob", "name": "whole", "weight_pool": pool(2 * GIB, 2 * GIB),
            "activation_pool": pool(1 * GIB, 1 * GIB)}
    shown = text_of(gpu_table(build(JOBS, shared_gpu(lora, free), 7, [], 230.0)))
    lines = {line.split("└ ")[1].strip(): line for line in shown.splitlines() if "└ " in line}
    assert set(lines) == {"#7 ann/lora-a", "#8 bob/whole"}, shown
    assert "weight 6.0/8.0 · act 20.0/30.0 ↑ · peak 27.0 est 25.0 GiB" in lines["#7 ann/lora-a"], shown
    assert "weight 2.0 · act 1.0 · peak 1.0 est – GiB" in lines["#8 bob/whole"], shown  # no budget, no estimate
    assert job_pools_cell(build(JOBS, shared_gpu(lora), 7, [], 230.0).gpus[0].jobs[0], "short") == \
        "█6.0/8.0 ▓20.0/30.0 ↑ GiB"


def test_dvla_gpus_lists_each_job_on_a_shared_gpu_with_its_pools_budgets_and_estimates(monkeypatch):
    from click.testing import CliRunner

    from dvla.cli.main import State, cli

    lora = {"id": 7, "user": "ann", "name": "lora-a", "weight_pool": pool(6 * GIB, 6 * GIB, 8 * GIB, int(6.5 * GIB)),
            "activation_pool": pool(20 * GIB, 27 * GIB, 30 * GIB, 25 * GIB), "activation_growing": True}
    other = {"id": 8, "user": "bob", "weight_pool": pool(None), "activation_pool": pool(None)}  # no row yet

    class Fake:
        def gpus(self) -> dict:
            return shared_gpu(lora, other)

    monkeypatch.setattr(State, "client", lambda self: Fake())
    shown = CliRunner().invoke(cli, ["gpus"], env={"COLUMNS": "200"}).output
    assert "#7 ann/lora-a, #8 bob" in shown, shown
    row = next(line for line in shown.splitlines() if "#7 ann/lora-a" in line and "jobs" not in line.lower()
               and "6.0/8.0" in line)
    assert row.split()[3:] == ["6.0/8.0", "20.0/30.0", "↑", "27.0", "25.0", "6.5"], shown
    assert next(line for line in shown.splitlines() if line.startswith("0 ") and "#8 bob" in line
                and "-/-" in line).split()[3:] == ["-/-", "-/-", "-", "-", "-"], shown


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
    assert detail.success_rate == (0.1, 0.3) and detail.env_steps_per_s == (100.0, 120.0)  # no episode count: as is


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


# -- what a newcomer meets (issue 16): a live H200 node, a slow learner, a CPU-only node -----------------

H200 = {"source": "nvml", "host": "gpu-h200", "gpus": [
    {"index": i, "name": "NVIDIA H200", "uuid": f"GPU-{i}", "utilization": 99.0, "memory_used": int(130.2 * GIB),
     "memory_total": int(139.8 * GIB), "temperature": 61.0, "power_draw": 607.0, "power_limit": 700.0,
     "job": {"id": 12, "user": "alice", "name": "reach-ppo"} if i == 0 else None,
     "jobs": [{"id": 12, "user": "alice", "name": "reach-ppo",
               "weight_pool": {"used": 100 * GIB, "peak": 100 * GIB, "budget": None, "estimate": None},
               "activation_pool": {"used": 20 * GIB, "peak": 20 * GIB, "budget": None, "estimate": None},
               "activation_growing": False}] if i == 0 else []} for i in range(2)]}
NODE = {"name": "gpu-h200", "gpu_source": "nvml", "gpus": [{"index": 0, "free": False}, {"index": 1, "free": True}],
        "cpu_slots": 16, "free_cpu_slots": 12, "running_jobs": 1, "cpu_percent": 43.0, "cpu_count": 16,
        "ram_used": 50 * GIB, "ram_total": 125 * GIB}
QUEUE = [{"id": 10, "user": "bob", "name": "old-run", "state": "succeeded", "priority": 0, "gpus": 1, "gpu_ids": [1],
          "started_at": 100.0, "ended_at": 160.0, "reason": "exit 0"},
         {"id": 11, "user": "bob", "name": "broken-run", "state": "failed", "priority": 0, "gpus": 0, "gpu_ids": [],
          "started_at": 100.0, "ended_at": 160.0, "reason": "job failed: boom"},
         {"id": 12, "user": "alice", "name": "reach-ppo", "state": "running", "priority": 0, "gpus": 1, "gpu_ids": [0],
          "started_at": time.time() - 1800, "ended_at": None},
         {"id": 13, "user": "carol", "name": "waits", "state": "queued", "priority": 0, "gpus": 2, "gpu_ids": [],
          "started_at": None, "ended_at": None, "pending_reason": "resources: waits for 2 GPUs (1 free)"}]


def slow_learner(n: int = 60, update_s: float = 30.0, samples: float = 960.0) -> list[dict]:
    """Rows of a learner taking ``update_s`` per update of ``samples``, 100% busy: each row counts its
    update's items or not by turns (the learner begins the next update before the row of the previous
    one is made), and 4 episodes end per update."""
    return [{"version": float(i + 1), "time_s": update_s * (i + 1), "env_steps": 1000.0 * (i + 1),
             "env_steps_per_s": 33.0 + i % 7, "episodes": 4 * i, "success_rate": min(1.0, i / 60),
             "samples": samples, "learn_s": update_s - 0.5, "publish_ms": 2.2, "queue_depth": 1.0,
             "staleness_mean": 0.4, "staleness_max": 1.0, "sample_busy": 0.6, "sample_items_per_s": 33.0,
             "infer_busy": 0.5, "infer_items_per_s": 33.0, "learn_busy": 1.0,
             "learn_items_per_s": 0.0 if i % 2 else 2 * samples / update_s, "distribute_busy": 0.001,
             "distribute_items_per_s": 0.0, "gpu_weight_bytes": 100 * GIB, "gpu_activation_bytes": 20 * GIB}
            for i in range(n)]


class FakeDaemon:
    """What ``dvla top``'s poller asks of a client, answered from fixed replies."""

    def __init__(self, gpus: dict, nodes: list[dict], jobs: list[dict], rows: list[dict]):
        self.endpoint = type("Endpoint", (), {"where": "unix:///fake/dvlad.sock"})()
        self._gpus, self._nodes, self._jobs, self._rows = gpus, nodes, jobs, rows

    def jobs(self, all: bool = False, limit: int | None = None) -> list[dict]:
        return self._jobs

    def gpus(self) -> dict:
        return self._gpus

    def nodes(self) -> list[dict]:
        return self._nodes

    def metrics(self, job_id: int, last: int | None = None) -> list[dict]:
        return self._rows[-(last or 0):]


def screen(width: int, height: int, *keys: str, daemon: FakeDaemon | None = None) -> str:
    fake = daemon or FakeDaemon(H200, [NODE], QUEUE, slow_learner())
    return asyncio.run(capture(fake, width, height, keys=keys, refresh_s=0.1))[0]  # type: ignore[arg-type]


def panel(text: str, title: str) -> list[str]:
    """The lines of the bordered panel titled ``title`` (its border lines included)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(f"╭─ {title}"))
    last = next(i for i in range(first + 1, len(lines)) if lines[i].startswith("╰"))
    return lines[first:last + 1]


FIGURES = ("NVIDIA H200", "99%", "130.2/139.8 GiB", "61°C", "607/700 W", "#12 alice/reach-ppo",
           "█100.0 ▓20.0 ▒10.2 GiB")


def test_the_gpu_table_cuts_nothing_at_160_columns_on_an_h200():
    node = "\n".join(panel(screen(160, 45), "node"))
    assert "…" not in node, node
    for shown in (*FIGURES, "temp", "power", "pools", "memory", "util"):
        assert shown in node, f"{shown!r} missing:\n{node}"
    assert node.count("████████████████████  99%") == 2  # full-width utilisation bars


@pytest.mark.parametrize("width", range(40, 201, 10))
def test_a_narrower_gpu_table_drops_or_shortens_columns_and_never_cuts_a_figure(width):
    snap = build(QUEUE, H200, 12, slow_learner(), time.time(), [NODE])
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(gpu_table(snap))
    console.print(NodeLine(snap.node))  # type: ignore[arg-type]
    shown = console.export_text()
    assert "…" not in re.sub(r"#12 \S*", "", shown), shown  # only the job's name may be cut (text, not a figure)
    assert ("#12 alice/reach-ppo" in shown) == (width >= 60)
    header = shown.splitlines()[0].split()
    for column, figure in (("temp", "61°C"), ("power", "607/700 W"), ("memory", "130.2/139.8 GiB")):
        assert (column in header) == (figure in shown), (width, column, shown)
    assert "memory" in header and "43%" in shown and "50.0/125.0 GiB" in shown and "4/16 used" in shown


def test_at_80_columns_the_screen_keeps_every_figure_whole():
    text = screen(80, 24)
    node = "\n".join(panel(text, "node"))
    assert "…" not in node and "607/700 W" in node and "130.2/139.8 GiB" in node and "61°C" in node
    assert " H200 " in node and "NVIDIA" not in node  # the vendor went before any figure
    assert "CPU  43% of 16" in node and "CPU slots 4/16 used" in node
    assert "learn" in text and "success 0.98 (236 episodes)" in text


def test_a_jobs_gpus_read_as_where_it_is_placed_in_top_jobs_and_status(monkeypatch):
    from click.testing import CliRunner

    from dvla.cli.main import State, cli
    from dvla.jobtext import gpus_column, gpus_sentence

    assert [gpus_column(j) for j in QUEUE] == ["GPU 1", "CPU", "GPU 0", "2 asked"]
    assert gpus_column({"gpus": 2, "gpu_ids": [0, 1]}) == "GPUs 0,1"
    assert gpus_sentence({**QUEUE[2], "gpus": 1}) == "1 asked, placed on GPU 0"
    assert gpus_sentence(QUEUE[3]) == "2 asked, not placed yet"
    assert gpus_sentence(QUEUE[1]) == "none (runs on the CPU)"
    record = {**QUEUE[2], "submitted_at": 90.0, "cpus": 2, "spec": {}, "events": [], "run_dir": "/x"}

    class Fake:
        def jobs(self, **_: object) -> list[dict]:
            return [{**j, "submitted_at": 90.0} for j in QUEUE]

        def job(self, job_id: int) -> dict:
            return record

        def metrics(self, job_id: int, last: int | None = None) -> list[dict]:
            return []  # no row yet: `dvla status` shows "-" of the budget

    monkeypatch.setattr(State, "client", lambda self: Fake())
    listed = CliRunner().invoke(cli, ["jobs"], env={"COLUMNS": "200"})
    row = next(line for line in listed.output.splitlines() if line.startswith("12 "))
    assert " GPU 0 " in row, listed.output
    status = CliRunner().invoke(cli, ["status", "12"], env={"COLUMNS": "200"})
    assert "1 asked, placed on GPU 0" in status.output, status.output


def test_sparklines_have_a_scale_one_cell_per_row_and_blanks_for_missing_rows():
    few = Sparkline(("two rows",), [0.0, 1.0], 0.0, 1.0, ".1f")
    console = Console(width=110, record=True, file=io.StringIO())
    console.print(few)
    lines = console.export_text().splitlines()
    assert lines == ["two rows", "1.0┤ █", "0.0┤▁█"]  # 2 points: 2 cells, not stretched; 0 draws ▁, not blank
    gaps = Sparkline(("gaps",), [None, 0.5, None], 0.0, 1.0)
    assert gaps.columns(10) == ["  ", "█ ", "  "]  # missing: blank, never drawn as 0
    assert len(Sparkline(("x",), [1.0] * 60, 0.0, 1.0).columns(20)) == 20  # the newest that fit
    detail = build(QUEUE, H200, 12, slow_learner(), time.time(), [NODE]).detail
    console = Console(width=60, record=True, file=io.StringIO())
    console.print(sparklines(detail))  # type: ignore[arg-type]
    text = console.export_text()
    assert "1.0┤" in text and "0.0┤" in text and "39┤" in text and "\n 0┤" in text  # each with its axis


def test_a_slow_learner_shows_its_rate_and_time_per_update_not_zero():
    rows = slow_learner()  # its rows' own learn figures: 64, 0, 64, 0, ...; really 32 samples/s
    lanes = {lane.name: lane for lane in build(QUEUE, H200, 12, rows, time.time(), [NODE]).detail.lanes}
    assert lanes["learn"].items_per_s == pytest.approx(32.0) and lanes["learn"].busy == pytest.approx(1.0)
    assert lanes["learn"].per_update_s == pytest.approx(29.5) and lanes["distribute"].per_update_s == 2.2e-3
    assert lanes["distribute"].items_per_s == pytest.approx(1 / 30)
    every_row_lost = [{**r, "learn_items_per_s": 0.0} for r in rows]  # each update begins before the last row
    assert build(QUEUE, H200, 12, every_row_lost, 0, []).detail.lanes[2].items_per_s == pytest.approx(32.0)
    detail = build(QUEUE, H200, 12, rows, time.time(), [NODE]).detail
    assert detail.updates_per_min == pytest.approx(2.0)
    shown = text_of(lanes_table(detail))
    assert re.search(r"learn +32\.0 +100% +█+ +29\.5 s", shown) and re.search(r"distribute +0\.033 .* 2\.2 ms", shown)


def test_a_cpu_only_node_shows_its_cpu_ram_and_cpu_slots():
    cpu_node = {**NODE, "name": "cpu-node", "gpu_source": "none", "gpus": [], "cpu_slots": 4, "free_cpu_slots": 1}
    jobs = [{**QUEUE[1], "id": 5, "state": "running", "ended_at": None}]
    text = screen(100, 30, daemon=FakeDaemon({"source": "none", "host": "cpu-node", "gpus": []}, [cpu_node], jobs,
                                             slow_learner()))
    node = "\n".join(panel(text, "node"))
    assert "43% of 16" in node and "50.0/125.0 GiB" in node and "CPU slots 3/4 used" in node, node
    assert "no GPUs on cpu-node" in node and "GPUs" not in node.replace("no GPUs", "")


def test_the_host_load_dvlad_reports_in_v1_nodes():
    from dvlad.server.host import HostLoad

    host = HostLoad(sample_s=0.05)
    first = host.reading()
    assert first["cpu_percent"] is None  # no interval measured yet: unknown, not 0
    assert first["cpu_count"] >= 1 and 0 < first["ram_used"] < first["ram_total"]  # type: ignore[operator]
    time.sleep(0.1)
    percent = host.reading()["cpu_percent"]
    assert percent is not None and 0.0 <= percent <= 100.0
    assert host.reading()["cpu_percent"] == percent  # callers within an interval share one reading


def test_f_hides_finished_jobs_and_queued_jobs_say_why_they_wait():
    shown = "\n".join(panel(screen(160, 45), "queue"))
    assert "old-run" in shown and "broken-run" in shown and "job failed: boom" in shown
    assert re.search(r"13 +carol +waits +queued +0 +2 asked +- +resources: waits for 2 GPUs \(1 free\)", shown), shown
    assert "REASON" in shown
    hidden = "\n".join(panel(screen(160, 45, "f"), "queue"))
    assert "old-run" not in hidden and "broken-run" not in hidden and "reach-ppo" in hidden and "waits" in hidden
    assert "2 finished hidden" in hidden
    again = "\n".join(panel(screen(160, 45, "f", "f"), "queue"))
    assert "old-run" in again and "broken-run" in again


def test_a_poll_that_lands_while_the_monitor_shuts_down_is_dropped():
    """The poll thread's last snapshot can reach the app after its screens went (``q`` during a poll,
    seen on a loaded machine): it used to fail the app with NoMatches('#status')."""

    async def run() -> None:
        app = TopApp(FakeDaemon(H200, [NODE], QUEUE, slow_learner()), 0.1)  # type: ignore[arg-type]
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
        app.show(app.snapshot)  # what call_from_thread delivers late

    asyncio.run(run())


def test_success_shows_only_once_enough_episodes_have_ended_with_their_count():
    rows = [{"success_rate": 1.0, "episodes": 5}, {"success_rate": 0.9, "episodes": SUCCESS_MIN_EPISODES - 1},
            {"success_rate": 0.6, "episodes": SUCCESS_MIN_EPISODES}]
    early = build(QUEUE, H200, 12, rows[:2], 0, []).detail
    assert early.success is None and early.episodes == SUCCESS_MIN_EPISODES - 1 and early.success_rate == (None, None)
    assert f"success – ({SUCCESS_MIN_EPISODES - 1} of {SUCCESS_MIN_EPISODES} episodes)" in text_of(sparklines(early))
    later = build(QUEUE, H200, 12, rows, 0, []).detail
    assert later.success == 0.6 and later.success_rate == (None, None, 0.6)
    assert f"success 0.60 ({SUCCESS_MIN_EPISODES} episodes)" in text_of(sparklines(later))


REASONS = ("resources: waits for 2 CPU slots (0 free)", "resources: waits for 1 GPU (0 free) and 2 CPU slots (0 free)",
           "priority: behind job 12 of alice (priority 5), which waits for 1 GPU (0 free)",
           "user limit: alice runs 2 jobs of at most 2 (limits.default.running_jobs)",
           "group limit: group students holds 4 GPUs and the job asks for 1 more, at most 4 "
           "(limits.groups.students.gpus)",
           "bigger than the node: asks for 2 GPUs and 8 CPU slots, the node has 1 GPU and 4 CPU slots; it waits in "
           "case the node grows back", "job failed: boom (out of memory)", "cancelled by alice")
"""The pending reasons of docs/cli.md's table, a failure and a cancel."""


@pytest.mark.parametrize("reason", REASONS)
def test_a_reason_that_does_not_fit_shortens_to_a_clause_or_its_category_never_mid_phrase(reason):
    assert fit_reason(reason, len(reason)) == reason  # room for it: whole
    category = reason.split(": ")[0] if ": " in reason else None
    for width in range(12, len(reason)):
        shown = fit_reason(reason, width)
        assert len(shown) <= max(width, len(f"{category}…")) and shown.endswith("…"), (width, shown)
        if category:  # a clause of the reason, or its category: squeue's short code
            assert shown.startswith(category) and shown[len(category)] in ":…", (width, shown)
            kept = shown.removesuffix("…")
            assert kept == category or reason.startswith(kept) or kept in re.sub(r" \([^)]*\)", "", reason), shown
    assert fit_reason(REASONS[0], 25) == "resources…"
    assert fit_reason(REASONS[2], 50) == "priority: behind job 12 of alice (priority 5)…"
    assert fit_reason(REASONS[3], 50) == "user limit: alice runs 2 jobs of at most 2…"


def test_a_flow_breaks_lines_only_between_phrases():
    phrases = ["job 3 · synthetic-b · running", "179.6 updates/min", "queue depth 0", "staleness mean 0.56 max 1",
               "version 79", "env steps 2,538"]
    for width in range(30, 140, 7):
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(Flow([Text(p) for p in phrases]))
        lines = console.export_text().splitlines()
        assert [p for line in lines for p in line.rstrip().split(" · ")] == " · ".join(phrases).split(" · "), lines
        assert all(len(line.rstrip()) <= width for line in lines), lines
    assert len(lines) == 1  # room for all: one line


@pytest.mark.parametrize("width", range(40, 161, 8))
def test_the_status_line_drops_whole_phrases_keeping_the_host_and_the_notes(width):
    snap = build(QUEUE, FIXTURE_GPUS, 12, [], time.time())
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(StatusLine(snap, "unix:///x.sock", 0.5))
    lines = console.export_text().splitlines()
    assert len(lines) == 1, lines
    phrases = lines[0].rstrip().split(" · ")
    assert phrases[1:2] == ["lab1"] or phrases[0] == "lab1", phrases
    assert "no NVML: recorded topology" in phrases, phrases
    whole = re.compile(r"dvla top|lab1|GPUs from fixture|4 jobs|every 0\.5 s \(0\.0 Hz\)|\d\d:\d\d:\d\d|"
                       r"no NVML: recorded topology")
    assert all(whole.fullmatch(p) for p in phrases), phrases


def test_the_reason_cells_follow_a_resize_without_waiting_for_a_poll():
    async def rows() -> list[str]:
        app = TopApp(FakeDaemon(H200, [NODE], QUEUE, slow_learner()), refresh_s=60.0)  # one poll only
        async with app.run_test(size=(160, 45)) as pilot:
            while not app.snapshot.jobs:
                await pilot.pause(0.05)
            shown = []
            for size in ((160, 45), (80, 24), (120, 30)):
                await pilot.resize_terminal(*size)
                await pilot.pause(0.1)
                shown.append(next(line for line in app.screen_text().splitlines() if "carol" in line).rstrip())
            return shown

    wide, narrow, again = asyncio.run(rows())
    assert "resources: waits for 2 GPUs (1 free)" in wide and len(wide) == 160, wide
    assert narrow.endswith("resources…            │") and len(narrow) == 80, narrow
    assert "resources: waits for 2 GPUs (1 free)" in again and len(again) == 120, again


def test_an_empty_queue_shows_its_columns_and_no_job():
    text = asyncio.run(capture(FakeDaemon(H200, [NODE], [], []), 80, 24, ready=lambda app: bool(app.snapshot.host),  # type: ignore[arg-type]
                               refresh_s=0.1))[0]
    assert "REASON" in "\n".join(panel(text, "queue")) and "no job selected" in text, text


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
            assert re.search(r"staleness mean [\d.]+ max \d+", screen) and re.search(r"success (–|[\d.]+) \(", screen)
            assert re.search(r"CPU +(█|░)+ +\d+% of \d+ .* CPU slots [1-4]/4 used", screen), screen  # /v1/nodes
            assert re.search(r"top-second +running +0 +CPU ", screen)
            node = client.nodes()[0]  # what the node line reads: the machine's CPU and RAM beside its CPU slots
            assert 0 <= node["cpu_percent"] <= 100 and node["cpu_count"] >= 1 and node["cpu_slots"] == 4
            assert 0 < node["ram_used"] < node["ram_total"]
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


STATUS_PHRASE = re.compile(r"dvla top|lent-h100-vm|GPUs from fixture|\d+ jobs|every [\d.]+ s \([\d.]+ Hz\)|"
                           r"\d\d:\d\d:\d\d|no NVML: recorded topology")
TITLE_PHRASE = re.compile(r"job \d+|top-\w+|running|queued|[\d.]+ updates/min|queue depth \d+|"
                          r"staleness mean [\d.]+ max \d+|version \d+|env steps [\d,]+")


def inside(lines: list[str]) -> list[str]:
    """A panel's lines without its borders."""
    return [line.strip()[1:-1].rstrip() for line in lines[1:-1]]


@pytest.mark.slow
@pytest.mark.skipif(not FIXTURE.exists(), reason=f"the recorded topology {FIXTURE} is not in this checkout")
def test_at_80x24_a_queued_jobs_reason_reads_whole_and_no_header_line_is_cut_mid_word(dvlads):
    """A real dvlad whose users may run one job each: the second job waits with a reason longer than
    the queue's room for it; the monitor at 80x24 shows it short in the queue and whole (wrapped) in
    the selected job's panel, and breaks its status line and the job's title only between phrases."""
    daemon = dvlads("[node]\ncpu_slots = 4\n[limits.default]\nrunning_jobs = 1\n", recorded_gpu=True)
    with sdk.Client(daemon.socket) as client:
        running = client.submit({**LONG, "job": {"name": "top-runs"}})
        waiting = client.submit({**LONG, "job": {"name": "top-waits"}})
        daemon.wait_state(running.id, {"running"})
        deadline = time.monotonic() + 30
        while not (reason := client.job(waiting.id)["pending_reason"] or ""):
            assert time.monotonic() < deadline, client.job(waiting.id)
            time.sleep(0.2)
        assert len(reason) > 60 and reason.startswith("user limit: "), reason  # longer than the queue's room

        def drawn(app) -> bool:  # the running job's figures and the waiting job's reason on screen
            return app.snapshot.detail is not None and app.snapshot.detail.updates_per_min is not None \
                and any(r.reason for r in app.snapshot.jobs)

        try:
            first = asyncio.run(capture(client, 80, 24, ready=drawn, timeout=60))[0]
            selected = asyncio.run(capture(client, 80, 24, keys=("j",), ready=drawn, timeout=60))[0]
        finally:
            for job in (running, waiting):
                with contextlib.suppress(sdk.Conflict):
                    client.cancel(job.id)
    status = first.splitlines()[0].rstrip().split(" · ")
    assert all(STATUS_PHRASE.fullmatch(p) for p in status) and "no NVML: recorded topology" in status, status
    title = [line for line in inside(panel(first, "selected job")) if not line.startswith(("lane", "sample"))][:2]
    assert len(title) == 2 and all(TITLE_PHRASE.fullmatch(p) for line in title for p in line.split(" · ")), title
    assert re.search(r"staleness mean [\d.]+ max \d+", " ".join(title)), title
    queue = panel(first, "queue")
    row = next(line for line in queue if "top-waits" in line)
    assert re.search(r"top-waits +queued +0 +CPU +- +user limit(: [^…]+)?…", row), "\n".join(queue)
    assert all(len(line) <= 80 for line in queue) and not any("▏" in line for line in queue), "\n".join(queue)
    shown = " ".join(inside(panel(selected, "selected job")))
    assert f"job {waiting.id} · top-waits · queued" in shown and f"why it waits: {reason}" in shown, selected
