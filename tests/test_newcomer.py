"""What a newcomer meets: the README's first steps, done as a user does them, against a real dvlad.

`dvlad --user` with no config at all, then `dvla submit examples/...`, the README's curl line and the
SDK's ``Client().train("tiny-vla", "reach")``, each found through the personal daemon's socket with
nothing pointing at it, on whatever machine the tests run (2 cores in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvla import sdk
from dvla.spec import load_spec
from dvlad.testing import LONG, ROOT, Dvlad, started_lanes, wait_for

EXAMPLES = ROOT / "examples"


def user_env(daemon: Dvlad) -> dict[str, str]:
    """The environment of a user of ``daemon`` (a personal one): its HOME and runtime dir, no DVLA_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVLA_")}
    return {**env, "HOME": str(daemon.home), "XDG_RUNTIME_DIR": str(daemon.home / "run"),
            "XDG_CONFIG_HOME": str(daemon.home / ".config"), "COLUMNS": "200"}


def runs_then_cancel(daemon: Dvlad, job_id: int, what: str) -> None:
    """The job starts running: its runner, as the user, got past its imports and its spec and began
    writing its run directory (``job.json``); then it is cancelled, which frees its slots."""
    started = daemon.wait_state(job_id, {"running", "succeeded", "failed", "cancelled"}, timeout=60)
    assert started["state"] == "running", (what, started["reason"])
    began = daemon.state_dir / "jobs" / str(job_id) / "run" / "job.json"
    deadline = time.monotonic() + 120
    while not began.exists():
        job = daemon.job(job_id)
        assert job["state"] == "running" and time.monotonic() < deadline, (what, job["state"], job["reason"])
        time.sleep(0.2)
    status, body = daemon.call("POST", f"/v1/jobs/{job_id}/cancel")
    assert status == 200, (what, body)
    ended = daemon.wait_state(job_id, {"cancelled", "succeeded", "failed"}, timeout=60)
    assert ended["state"] == "cancelled", (what, ended["reason"])


@pytest.mark.slow
def test_a_personal_daemon_with_no_config_runs_every_example_the_curl_line_and_the_sdk(dvlads, monkeypatch):
    daemon = dvlads(None, user_mode=True)  # `dvlad --user`, no --config: built-in defaults
    env = user_env(daemon)
    examples = sorted(EXAMPLES.glob("*.toml"))
    cpu_only = [path for path in examples if load_spec(path).resources.gpus == 0]
    gpu_only = {"gpu_bench.toml", "gpu_bench_libero.toml", "gpu_bench_libero_balanced.toml",
                "gpu_bench_libero_lora.toml", "gpu_libero_hf_vla_500m.toml", "gpu_libero_tvla_500m.toml"}
    assert {p.name for p in examples} - {p.name for p in cpu_only} == gpu_only
    for path in cpu_only:
        submitted = subprocess.run([sys.executable, "-m", "dvla.cli", "submit", str(path)], env=env,
                                   capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, (path.name, submitted.stderr)
        runs_then_cancel(daemon, int(submitted.stdout), path.name)

    status, body = daemon.call("POST", "/v1/jobs", {"spec": {"env": {"name": "reach"}},  # the README's curl line
                                                    "idempotency_key": "try-1"})
    assert status == 201, body
    runs_then_cancel(daemon, body["job"]["id"], "curl")

    for key, value in env.items():  # the SDK finds the personal daemon as the user's own Python would
        monkeypatch.setenv(key, value)
    for key in ("DVLA_HOST", "DVLA_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    with sdk.Client() as client:
        assert client.endpoint.uds == daemon.socket
        job = client.train("tiny-vla", "reach")
        runs_then_cancel(daemon, job.id, "sdk")
        node, = client.nodes()
        assert node["cpu_slots"] == 4 * (os.cpu_count() or 1)


@pytest.mark.slow
def test_a_job_cancelled_while_it_sets_up_is_cancelled_and_its_summary_says_stopped(dvlads):
    """`dvla cancel` ~20 s after submit, while the job's learner was starting, killed the learner: the
    job's summary.json said failed ("learner (pid N) killed by signal SIGTERM before it was ready")."""
    daemon = dvlads(None, user_mode=True)
    status, body = daemon.call("POST", "/v1/jobs", {"spec": LONG})
    assert status == 201, body
    job_id = body["job"]["id"]
    pid = daemon.wait_state(job_id, {"running"}, timeout=60)["pid"]
    wait_for(lambda: started_lanes(pid) > LONG["env"]["workers"], 120, "the job's learner")  # spawned: importing
    assert daemon.call("POST", f"/v1/jobs/{job_id}/cancel")[0] == 200
    ended = daemon.wait_state(job_id, {"cancelled", "succeeded", "failed"}, timeout=60)
    assert (ended["state"], ended["exit_code"]) == ("cancelled", 3), ended["reason"]
    summary = json.loads((Path(ended["run_dir"]) / "summary.json").read_text())
    assert (summary["status"], summary["stop_reason"], summary["during_setup"], summary["checkpoint"]) == \
        ("stopped", "stopped (SIGTERM)", True, None), summary


def test_a_cpu_slot_is_a_share_of_a_core_four_per_core_for_a_personal_daemon(tmp_path, monkeypatch):
    from dvlad.server.main import _parser, resolve

    monkeypatch.setenv("HOME", str(tmp_path))
    cores = os.cpu_count() or 1
    nowhere = tmp_path / "no-system-config.toml"
    assert resolve(_parser().parse_args([]), nowhere).cpu_slots == cores
    personal = resolve(_parser().parse_args(["--user"]), nowhere)
    assert personal.cpu_slots == 4 * cores
    assert personal.cpu_slots_origin == f"{cores} core{'s' * (cores != 1)} × node.cpu_oversubscribe = 4"
    config = tmp_path / "dvlad.toml"
    config.write_text("[node]\ncpu_oversubscribe = 2\n")
    assert resolve(_parser().parse_args(["--user", "--config", str(config)]), nowhere).cpu_slots == 2 * cores
    config.write_text("[node]\ncpu_slots = 3\ncpu_oversubscribe = 2\n")
    explicit = resolve(_parser().parse_args(["--user", "--config", str(config)]), nowhere)
    assert (explicit.cpu_slots, explicit.cpu_slots_origin) == (3, "node.cpu_slots")
