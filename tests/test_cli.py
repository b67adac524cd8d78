"""The `dvla` command line as a script uses it: a subprocess against a real dvlad on a real socket,
checking output and the documented exit statuses (0 ok, 1 job failed or refused, 2 usage, 3 no daemon)."""

from __future__ import annotations

import csv
import getpass
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from dvla.api import RECONNECT_S
from dvlad.testing import FIXTURE, LONG, TINY_POLICY, free_port, wait_for

QUICK = {"job": {"name": "cli-quick"}, "policy": {"args": TINY_POLICY},
         "env": {"name": "synthetic", "num_envs": 4, "groups": 2, "workers": 1,
                 "args": {"step_ms": 1.0, "image_size": 16, "cameras": ["image"], "max_episode_steps": 12}},
         "algo": {"update_epochs": 1, "minibatches": 2}, "pipeline": {"segment_steps": 8},
         "train": {"total_env_steps": 256, "resume": False}}
"""A job that succeeds within seconds and writes several metric rows."""
BROKEN = {**QUICK, "job": {"name": "cli-broken"}, "policy": {"name": "nosuch.module:make"}}
"""A job that fails: its policy factory cannot be imported (the job process's path has no tests/)."""


def dvla(*args: str, host: str | None = None, timeout: float = 120,
         columns: int = 200) -> subprocess.CompletedProcess[str]:
    """``python -m dvla.cli ARGS`` (what the ``dvla`` script runs), with stdout a pipe, ``columns`` wide."""
    env = {**os.environ, "COLUMNS": str(columns), "DVLA_HOST": host or "/nonexistent/dvlad.sock"}
    return subprocess.run([sys.executable, "-m", "dvla.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def dvla_in(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``dvla ARGS`` run from ``cwd``, with no $DVLA_HOST: the address is the arguments' alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVLA_")}
    return subprocess.run([sys.executable, "-m", "dvla.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**env, "COLUMNS": "200", "XDG_RUNTIME_DIR": str(cwd)}, timeout=timeout)


def dvla_popen(*args: str, host: str) -> subprocess.Popen[str]:
    """``dvla ARGS`` running in the background (a follower), as :func:`dvla` runs it."""
    env = {**os.environ, "COLUMNS": "200", "DVLA_HOST": host}
    return subprocess.Popen([sys.executable, "-m", "dvla.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def job_file(tmp_path: Path, spec: dict, name: str = "job.toml") -> str:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(spec))
    return str(path)


@pytest.fixture(scope="module")
def daemon(module_dvlads):
    return module_dvlads("[node]\ncpu_slots = 2\n", recorded_gpu=True)


@pytest.mark.slow
def test_submit_status_jobs_logs_cancel_and_their_exit_codes(daemon, tmp_path):
    sock = daemon.socket
    submitted = dvla("submit", job_file(tmp_path, LONG), "--priority", "3", host=sock)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)  # only the id: id=$(dvla submit job.toml)
    record = json.loads(dvla("status", str(job_id), "--json", host=sock).stdout)
    assert record["id"] == job_id and record["priority"] == 3 and record["spec"]["env"]["name"] == "synthetic"
    daemon.wait_state(job_id, {"running"}, timeout=60)
    shown = dvla("status", str(job_id), host=sock)
    assert shown.returncode == 0 and "long" in shown.stdout and "running" in shown.stdout
    assert "queued" in shown.stdout and "placing" in shown.stdout  # its events
    listed = dvla("jobs", host=sock)
    assert listed.returncode == 0 and f"{job_id} " in listed.stdout and "RUNTIME" in listed.stdout
    assert job_id in [j["id"] for j in json.loads(dvla("jobs", "--all", "--json", host=sock).stdout)]
    assert json.loads(dvla("jobs", "--user", "nobody-here", "--json", host=sock).stdout) == []
    assert dvla("logs", str(job_id), host=sock).returncode == 0
    cancelled = dvla("cancel", str(job_id), host=sock)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"job {job_id} cancelling"
    ended = daemon.wait_state(job_id, {"cancelled"}, timeout=60)
    followed = dvla("logs", str(job_id), "--follow", host=sock)  # an ended job's stream ends
    assert followed.returncode == 0 and followed.stdout == dvla("logs", str(job_id), host=sock).stdout
    again = dvla("cancel", str(job_id), "--json", host=sock)
    assert again.returncode == 1 and json.loads(again.stdout) == {  # --json: the daemon's error object on stdout
        "code": "conflict", "field": "job_id", "reason": f"job {job_id} is already cancelled"}
    assert again.stderr.startswith("dvla: ") and "already cancelled" in again.stderr
    assert len(again.stderr.splitlines()) == 1  # one line, no traceback
    missing = dvla("status", "987654", host=sock)
    assert missing.returncode == 1 and "987654" in missing.stderr and "Traceback" not in missing.stderr
    for args in (("status", "987654"), ("metrics", "987654"), ("checkpoint", "987654", "-o", "/nonexistent/x")):
        failed = dvla(*args, "--json", host=sock)
        assert failed.returncode == 1 and json.loads(failed.stdout) == {
            "code": "not_found", "field": "job_id", "reason": "no job 987654"}, (args, failed.stdout)
    assert ended["reason"] == "cancelled by root" or os.geteuid() != 0


@pytest.mark.slow
def test_a_job_bigger_than_the_node_is_refused_in_one_line_with_exit_1(daemon, tmp_path):
    too_big = {**LONG, "job": {"name": "too-big"}, "env": {**LONG["env"], "num_envs": 8, "workers": 4}}  # 4 of 2
    refused = dvla("submit", job_file(tmp_path, too_big), host=daemon.socket)
    assert refused.returncode == 1 and refused.stdout == "", refused.stderr
    as_json = dvla("submit", job_file(tmp_path, too_big), "--json", host=daemon.socket)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["code"] == "exceeds_node"
    assert refused.stderr.startswith("dvla: spec.env.workers: this node has ")
    assert "; the job asks for 0 GPUs and 4 CPU slots (one per env worker): lower env.workers to 2 or fewer" \
        in refused.stderr and "node.cpu_slots" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "too-big" not in dvla("jobs", host=daemon.socket).stdout


@pytest.mark.slow
def test_usage_errors_and_invalid_files_exit_2_before_any_request(daemon, tmp_path):
    bad = dvla("submit", job_file(tmp_path, {"env": {"num_envs": 3}}), host=daemon.socket)
    assert bad.returncode == 2 and "env.num_envs" in bad.stderr and "job.toml:" in bad.stderr
    nowhere = dvla("submit", job_file(tmp_path, {"env": {"num_envs": 3}}), host=str(tmp_path / "no.sock"))
    assert nowhere.stderr == bad.stderr  # refused here, before looking for a daemon (none there: that is exit 3)
    assert dvla("submit", str(tmp_path / "missing.toml")).returncode == 2  # checked before the daemon is looked for
    assert dvla("status", "twelve", host=daemon.socket).returncode == 2
    slow = dvla("top", "--refresh", "abc", host=daemon.socket)
    assert slow.returncode == 2 and "'abc' is not a valid number" in slow.stderr
    assert dvla("jobs", "--no-such-flag", host=daemon.socket).returncode == 2
    assert dvla("frobnicate").returncode == 2


@pytest.mark.slow
def test_follow_exits_with_the_jobs_outcome_and_report_draws_its_metrics(daemon, tmp_path):
    ok = dvla("submit", job_file(tmp_path, QUICK), "--follow", host=daemon.socket)
    assert ok.returncode == 0, ok.stderr
    job_id = int(ok.stdout.splitlines()[0])
    assert any(line.startswith("done: ") for line in ok.stdout.splitlines()), ok.stdout
    assert f"job {job_id} succeeded" in ok.stderr
    failed = dvla("submit", job_file(tmp_path, BROKEN, "broken.toml"), "--follow", "--json", host=daemon.socket)
    assert failed.returncode == 1
    final = json.loads(failed.stdout)  # --json: the log went to stderr, the final record to stdout
    assert final["state"] == "failed" and "nosuch" in final["reason"]
    assert failed.stderr.splitlines()[-1].startswith(f"dvla: job {final['id']} failed: ")

    out = tmp_path / "report.png"
    drawn = dvla("report", str(job_id), "-o", str(out), host=daemon.socket)
    assert drawn.returncode == 0 and drawn.stdout.strip() == str(out), drawn.stderr
    import matplotlib.image

    pixels = matplotlib.image.imread(out)
    height, width = pixels.shape[:2]
    assert width >= 1000 and height >= 800  # three rows of two panels at 100 dpi
    assert len({tuple(p) for p in pixels[::7, ::7].reshape(-1, pixels.shape[2])}) > 20  # curves, not a blank page
    empty = dvla("report", str(final["id"]), "-o", str(tmp_path / "none.png"), host=daemon.socket)
    assert empty.returncode == 1 and "no metric rows" in empty.stderr and not (tmp_path / "none.png").exists()


@pytest.mark.slow
def test_piped_tables_are_printed_whole_whatever_the_width(daemon, tmp_path):
    """`dvla nodes | cat` and `dvla jobs > file` were cut to 80 columns: headers read `NO… STA…`, and jobs
    dropped its REASON column."""
    failed = dvla("submit", job_file(tmp_path, {**BROKEN, "job": {"name": "cli-piped"}}), "--follow",
                  host=daemon.socket)
    job_id = int(failed.stdout.splitlines()[0])
    reason = json.loads(dvla("status", str(job_id), "--json", host=daemon.socket).stdout)["reason"]
    jobs = dvla("jobs", host=daemon.socket, columns=80).stdout
    assert jobs.split()[:9] == ["ID", "USER", "NAME", "STATE", "PRI", "GPUS", "SUBMITTED", "RUNTIME", "REASON"]
    row, = [line for line in jobs.splitlines() if line.startswith(f"{job_id} ")]
    assert row.rstrip().endswith(reason) and len(row) > 80, row
    nodes = dvla("nodes", host=daemon.socket, columns=80).stdout
    assert nodes.split()[:3] == ["NODE", "STATE", "HEARTBEAT"], nodes
    assert "GPU SOURCE" in nodes.splitlines()[0] and "…" not in jobs + nodes, nodes
    assert {row["id"] for row in json.loads(dvla("jobs", "--json", host=daemon.socket).stdout)} >= {job_id}


@pytest.mark.slow
def test_machine_commands_print_tables_and_json(daemon):
    sock = daemon.socket
    nodes = json.loads(dvla("nodes", "--json", host=sock).stdout)
    assert nodes[0]["cpu_slots"] == 2 and "free_cpu_slots" in nodes[0]
    topo = json.loads(dvla("topo", "--json", host=sock).stdout)
    gpus = json.loads(dvla("gpus", "--json", host=sock).stdout)
    assert set(topo) >= {"gpus", "links", "islands"} and "gpus" in gpus
    for command in ("nodes", "topo", "gpus"):
        assert dvla(command, host=sock).returncode == 0
    if FIXTURE.exists():  # the recorded H100: one GPU, its own island, no live stats
        assert topo["links"] == [["X"]] and topo["islands"] == [[0]]
        shown = dvla("topo", host=sock).stdout
        assert "GPU0" in shown and "NVLink islands: {GPU0}" in shown and "NVIDIA H100" in shown
        assert "NVIDIA H100 80GB HBM3" in dvla("gpus", host=sock).stdout


def test_an_unreachable_daemon_exits_3_with_where_it_looked(tmp_path):
    """At once, following too: a daemon never reached is not restarting, so nothing is waited for (a
    timeout here, well inside the reconnect window, fails the test)."""
    sock = str(tmp_path / "no.sock")
    quick = job_file(tmp_path, QUICK)
    for args in (("jobs",), ("status", "1"), ("nodes",), ("logs", "1", "-f"), ("submit", quick),
                 ("submit", quick, "--follow")):
        result = dvla(*args, host=sock, timeout=RECONNECT_S / 3)
        assert result.returncode == 3, (args, result.stderr)
        assert sock in result.stderr and "dvlad --user" in result.stderr and "Traceback" not in result.stderr
    tcp = dvla("--host", f"127.0.0.1:{free_port()}", "--token", "t", "jobs")  # the option wins over $DVLA_HOST
    assert tcp.returncode == 3 and "127.0.0.1" in tcp.stderr


@pytest.mark.parametrize("address,why", [
    ("http://[::1", "Invalid IPv6 URL"), ("ftp://x", "unknown scheme 'ftp'"),
    ("gpu1.lab:99999", "Port out of range 0-65535"), ("http://gpu1.lab:7447/v1", "nothing may follow host:port"),
    ("unix://dvlad.sock", "a Unix socket's path must be absolute"),
    ("localhost", "no port: write host:port with the port of the daemon's daemon.tcp setting"),
    ("gpu1.lab", "no port: write host:port"), ("[::1]", "no port: write host:port"),
    ("gpu1.lab:7447/v1", "nothing may follow host:port")])
def test_a_bad_host_is_a_usage_error_that_names_it_and_where_it_came_from(address, why):
    for result, origin in ((dvla("--host", address, "jobs"), "the host argument"),
                           (dvla("jobs", host=address), "$DVLA_HOST")):
        assert result.returncode == 2, result.stderr
        line, = result.stderr.splitlines()  # one line, no traceback
        assert line.startswith(f"dvla: bad daemon address {address!r} (from {origin}): {why}"), line


def test_numbers_have_named_values_bounds_and_plain_errors(tmp_path):
    assert "--limit N " in dvla("jobs", "--help").stdout
    helped = dvla("submit", "--help").stdout
    assert "--priority N " in helped and "-1000<=x<=1000" in helped  # the daemon's bounds, shown
    assert "INTEGER RANGE" not in helped + dvla("jobs", "--help").stdout
    word = dvla("status", "abc")  # refused before any daemon is looked for: 2, not 3
    assert word.returncode == 2 and "'abc' is not a valid integer." in word.stderr, word.stderr
    over = dvla("submit", job_file(tmp_path, QUICK), "--priority", "1001")
    assert over.returncode == 2 and "1001 is not in the range -1000<=x<=1000" in over.stderr, over.stderr


@pytest.mark.slow
def test_a_queued_job_says_why_it_waits_in_its_record_status_jobs_and_submit_follow(dvlads, tmp_path):
    """As squeue's REASON: first the resources it waits for; then, once a higher-priority job of the
    same user heads the line, that job. submit --follow prints each change while the job is queued."""
    d = dvlads("[node]\ncpu_slots = 2\n")
    sock = d.socket
    hog = {**LONG, "job": {"name": "hog"}, "env": {**LONG["env"], "workers": 2}}  # both CPU slots, until cancelled
    hog_id = int(dvla("submit", job_file(tmp_path, hog, "hog.toml"), host=sock).stdout)
    d.wait_state(hog_id, {"running"}, timeout=30)
    follower = dvla_popen("submit", job_file(tmp_path, QUICK), "--follow", host=sock)  # 1 slot, 0 free
    queued = wait_for(lambda: [j for j in d.call("GET", "/v1/jobs")[1]["jobs"]
                               if j["name"] == "cli-quick" and j["pending_reason"]], 60, "cli-quick's pending reason")
    job_id, user = queued[0]["id"], queued[0]["user"]
    resources = "resources: waits for 1 CPU slot (0 free)"
    assert d.job(job_id)["pending_reason"] == resources
    shown = dvla("status", str(job_id), host=sock)
    assert shown.returncode == 0 and re.search(rf"^waiting +{re.escape(resources)}", shown.stdout, re.M), shown.stdout
    assert json.loads(dvla("status", str(job_id), "--json", host=sock).stdout)["pending_reason"] == resources
    row, = [line for line in dvla("jobs", host=sock).stdout.splitlines() if line.startswith(f"{job_id} ")]
    assert row.rstrip().endswith(f"waiting: {resources}"), row
    assert json.loads(dvla("jobs", "--json", host=sock).stdout)[-1]["pending_reason"] == resources

    urgent = {**QUICK, "job": {"name": "urgent"}, "env": {**QUICK["env"], "workers": 2}}
    urgent_id = int(dvla("submit", job_file(tmp_path, urgent, "urgent.toml"), "--priority", "5", host=sock).stdout)
    behind = (f"priority: behind job {urgent_id} of {user} (priority 5), which waits for 2 CPU slots (0 free)")
    wait_for(lambda: d.job(job_id)["pending_reason"] == behind, 60, f"pending reason {behind!r}")
    assert d.job(hog_id)["pending_reason"] is None  # running: nothing to wait for
    dvla("cancel", str(hog_id), host=sock)  # urgent runs, then cli-quick
    out, err = follower.communicate(timeout=240)
    assert follower.returncode == 0, err
    notes = [line for line in err.splitlines() if " queued: " in line]
    assert notes[:2] == [f"dvla: job {job_id} queued: {resources}", f"dvla: job {job_id} queued: {behind}"], err
    assert all(a != b for a, b in itertools.pairwise(notes))  # printed when it changes, not every poll
    assert out.splitlines()[0] == str(job_id) and f"job {job_id} succeeded" in err
    assert d.job(urgent_id)["state"] == "succeeded"


@pytest.mark.slow
def test_status_shows_the_run_directory_and_metrics_and_checkpoint_fetch_what_it_holds(daemon, tmp_path):
    sock = daemon.socket
    done = dvla("submit", job_file(tmp_path, {**QUICK, "job": {"name": "cli-outputs"}}), "--follow", host=sock)
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.splitlines()[0])
    run = daemon.state_dir / "jobs" / str(job_id) / "run"
    record = json.loads(dvla("status", str(job_id), "--json", host=sock).stdout)
    assert record["run_dir"] == str(run) and record["pending_reason"] is None
    shown = dvla("status", str(job_id), host=sock).stdout  # a cell is padded to its column's widest (the reason)
    assert re.search(rf"^run dir +{re.escape(str(run))} *$", shown, re.M), shown

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    table = dvla("metrics", str(job_id), host=sock)
    assert table.returncode == 0, table.stderr
    parsed = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [float(r["env_steps"]) for r in parsed] == [r["env_steps"] for r in rows] and len(rows) >= 2
    assert json.loads(parsed[-1]["staleness_hist"]) == rows[-1]["staleness_hist"]  # a list cell: JSON
    lines = dvla("metrics", str(job_id), "--last", "2", "--json", host=sock).stdout.splitlines()
    assert [json.loads(line) for line in lines] == rows[-2:]

    dest = tmp_path / "ckpt"
    got = dvla("checkpoint", str(job_id), "-o", str(dest), host=sock)
    assert got.returncode == 0, got.stderr
    written = sorted(run.glob("*.safetensors"))
    assert got.stdout.splitlines() == [str(dest / p.name) for p in written] and written
    assert all((dest / p.name).read_bytes() == p.read_bytes() for p in written)
    again = json.loads(dvla("checkpoint", str(job_id), "-o", str(tmp_path / "again"), "--json", host=sock).stdout)
    assert again == {"job_id": job_id, "files": [str(tmp_path / "again" / p.name) for p in written]}
    default = subprocess.run([sys.executable, "-m", "dvla.cli", "checkpoint", str(job_id)], cwd=tmp_path,
                             env={**os.environ, "DVLA_HOST": sock}, capture_output=True, text=True, timeout=60)
    assert default.returncode == 0 and (tmp_path / f"job-{job_id}" / written[0].name).is_file(), default.stderr

    failed = dvla("submit", job_file(tmp_path, BROKEN, "broken.toml"), "--follow", host=sock)
    broken_id = int(failed.stdout.splitlines()[0])
    none = dvla("checkpoint", str(broken_id), "-o", str(tmp_path / "none"), host=sock)
    assert none.returncode == 1 and "no checkpoint" in none.stderr, none.stderr
    empty = dvla("metrics", str(broken_id), host=sock)
    assert empty.returncode == 1 and "no metric rows" in empty.stderr and empty.stdout == ""


REFUSED = [{"env": {"num_envs": 4611686018427387904}}, {"train": {"total_env_steps": 1 << 60}},
           {"policy": {"name": "hf-vla"}}, {"algo": {"name": "bc", "demonstrations": "no/demos.hdf5"}}]
"""Specs that dvlad took (and whose job then failed), or that dvla validate passed and dvlad refused."""


@pytest.mark.slow
@pytest.mark.parametrize("spec", REFUSED, ids=["num-envs", "env-steps", "hf-vla-pretrained", "demonstrations"])
def test_dvlad_refuses_at_submit_what_validate_refuses_naming_the_same_keys(daemon, tmp_path, spec):
    """One function checks both (dvla.admission): a relative path is refused by each for its own reason
    (not there; left relative, which dvlad would look up in the job's run directory)."""
    checked = dvla("validate", job_file(tmp_path, spec), "--json")
    assert checked.returncode == 2, checked.stdout
    (report,) = json.loads(checked.stdout)
    status, body = daemon.call("POST", "/v1/jobs", {"spec": spec})
    assert (status, body.get("code")) == (400, "invalid_spec"), body
    assert [issue["field"] for issue in body["issues"]] == [f"spec.{issue['key']}" for issue in report["issues"]]


@pytest.mark.slow
def test_steps_done_of_the_budget_counts_as_integers_no_empty_checkpoint_dir_and_failed_said_once(daemon, tmp_path):
    """dvla status showed `env steps 1000000` (the budget) for a job stopped at 56,384; dvla metrics printed
    version and env_steps as floats; dvla checkpoint -o DIR left DIR empty when there was no checkpoint; a
    failure read `dvla: job 10 failed: job failed: ...`."""
    sock = daemon.socket
    done = dvla("submit", job_file(tmp_path, {**QUICK, "job": {"name": "cli-counts"}}), "--follow", host=sock)
    job_id = int(done.stdout.splitlines()[0])
    rows = list(csv.DictReader(io.StringIO(dvla("metrics", str(job_id), host=sock).stdout)))
    assert all(row[key].isdigit() for row in rows for key in ("version", "env_steps", "episodes")), rows[-1]
    shown = dvla("status", str(job_id), host=sock).stdout
    assert re.search(rf"^env steps +{int(rows[-1]['env_steps']):,} of 256 *$", shown, re.M), shown

    failed = dvla("submit", job_file(tmp_path, {**BROKEN, "job": {"name": "cli-once"}}), "--follow", host=sock)
    broken_id = int(failed.stdout.splitlines()[0])
    said = f"dvla: job {broken_id} failed: cannot import policy module 'nosuch.module'"
    assert failed.returncode == 1 and said in failed.stderr, failed.stderr
    none = dvla("checkpoint", str(broken_id), "-o", str(tmp_path / "none"), host=sock)
    assert none.returncode == 1 and "no checkpoint" in none.stderr and not (tmp_path / "none").exists()


@pytest.mark.slow
def test_a_relative_checkpoint_in_a_job_file_is_the_files_referenced_locally_and_uploaded_remotely(dvlads, tmp_path):
    """Before, "runs/mine" reached dvlad as it was and the job, in its run directory, failed after queueing."""
    d = dvlads("[node]\ncpu_slots = 2\n", start=False)
    port = d.serve_tcp(f"cli-token {getpass.getuser()}\n")
    d.start()
    first = dvla("submit", job_file(tmp_path, QUICK), "--follow", host=d.socket)
    assert first.returncode == 0, first.stderr
    project = tmp_path / "project"
    mine = project / "runs" / "mine"
    assert dvla("checkpoint", first.stdout.splitlines()[0], "-o", str(mine), host=d.socket).returncode == 0
    spec = {**QUICK, "job": {"name": "from-mine"}, "policy": {**QUICK["policy"], "checkpoint": "runs/mine"}}
    path = job_file(project, spec)
    assert dvla("validate", path).returncode == 0  # run from elsewhere: the path is the file's, not the cwd's
    env = {**os.environ, "DVLA_HOST": d.socket}
    local = subprocess.run([sys.executable, "-m", "dvla.cli", "submit", path, "--follow", "--json"], cwd="/",
                           env=env, capture_output=True, text=True, timeout=180)
    assert local.returncode == 0, local.stderr  # the job started from the checkpoint, as the user
    record = d.job(json.loads(local.stdout)["id"])
    assert record["spec"]["policy"]["checkpoint"] == str(mine / "checkpoint.safetensors")

    remote = dvla("--host", f"127.0.0.1:{port}", "--token", "cli-token", "submit", path, "--json")
    assert remote.returncode == 0, remote.stderr
    uploaded = d.job(json.loads(remote.stdout)["id"])["spec"]["policy"]["checkpoint"]
    assert uploaded.startswith(f"{d.state_dir / 'uploads'}/") and uploaded.endswith("/checkpoint.safetensors")
    assert Path(uploaded).read_bytes() == (mine / "checkpoint.safetensors").read_bytes()
    dvla("cancel", str(json.loads(remote.stdout)["id"]), host=d.socket)

    missing = job_file(project, {**spec, "policy": {**spec["policy"], "checkpoint": "runs/nope"}}, "missing.toml")
    for args in (("validate", missing), ("submit", missing)):
        refused = dvla(*args, host=d.socket)
        said = refused.stdout + refused.stderr  # validate lists the issues on stdout, submit's error is on stderr
        assert refused.returncode == 2, said
        assert f"missing.toml:5:1: policy.checkpoint: {project}/runs/nope: no such checkpoint file" in said
        assert f"(the relative 'runs/nope' is taken from the job file's folder, {project})" in said
    status, body = d.call("POST", "/v1/jobs", {"spec": {"policy": {"checkpoint": "runs/mine"}}})  # curl: no file
    assert (status, body["code"], body["field"]) == (400, "invalid_spec", "spec.policy.checkpoint"), body
    assert "a relative path ('runs/mine') would be looked up in the job's run directory" in body["reason"]


COMMANDS_WITH_JSON = [("submit", "{job}"), ("jobs",), ("status", "1"), ("cancel", "1"), ("nodes",), ("topo",),
                      ("gpus",), ("metrics", "1"), ("checkpoint", "1", "-o", "{tmp}/ckpt")]
"""One of each command that takes --json (validate prints its own JSON: its issues), in each family."""


@pytest.mark.parametrize("args", COMMANDS_WITH_JSON, ids=[c[0] for c in COMMANDS_WITH_JSON])
def test_json_failures_print_the_error_object_on_stdout(tmp_path, args):
    """docs/cli.md: a script reading --json learns why from stdout, as the daemon's {code, field, reason}."""
    args = tuple(a.format(job=job_file(tmp_path, QUICK), tmp=tmp_path) for a in args)
    sock = str(tmp_path / "no.sock")
    unreachable = dvla(*args, "--json", host=sock)
    assert unreachable.returncode == 3, unreachable.stderr
    body = json.loads(unreachable.stdout)
    assert body["code"] == "unavailable" and body["field"] == "" and sock in body["reason"]
    assert unreachable.stderr.startswith("dvla: cannot reach dvlad")  # the line for people stays
    bad_host = dvla(*args, "--json", host="ftp://x")
    assert bad_host.returncode == 2 and json.loads(bad_host.stdout)["code"] == "bad_config"
    usage = dvla(*args, "--json", "--no-such-flag", host=sock)
    assert usage.returncode == 2 and json.loads(usage.stdout)["code"] == "usage", usage.stdout


def test_json_failure_of_an_invalid_job_file_lists_its_issues(tmp_path):
    bad = dvla("submit", job_file(tmp_path, {"env": {"num_envs": 3}}), "--json")
    assert bad.returncode == 2, bad.stderr
    body = json.loads(bad.stdout)
    assert body["code"] == "invalid_spec" and body["field"] == "spec.env.num_envs"
    assert [i["field"] for i in body["issues"]] == ["spec.env.num_envs"]
    listed = dvla("validate", job_file(tmp_path, {"env": {"num_envs": 3}}), "--json")  # validate: its own JSON
    assert listed.returncode == 2 and json.loads(listed.stdout)[0]["issues"][0]["key"] == "env.num_envs"


@pytest.mark.parametrize("address,socket", [("dvlad.sock", "dvlad.sock"), ("./dvlad.sock", "dvlad.sock"),
                                            ("run/dvlad.sock", "run/dvlad.sock"), ("../x/d.sock", "../x/d.sock")])
def test_a_host_that_names_a_path_is_a_unix_socket_taken_from_the_current_directory(tmp_path, address, socket):
    """Before, dvlad.sock was taken for a TCP host (port 80) and ./dvlad.sock refused with a TCP reason."""
    (tmp_path / "here").mkdir()
    where = os.path.normpath(tmp_path / "here" / socket)
    result = dvla_in(tmp_path / "here", "--host", address, "jobs")
    assert result.returncode == 3, result.stderr  # nothing listens there: unreachable, saying where it looked
    assert result.stderr.startswith(f"dvla: cannot reach dvlad at unix://{where} (from the host argument)"), \
        result.stderr


@pytest.mark.slow
def test_a_relative_socket_path_reaches_the_daemon(daemon):
    here = Path(daemon.socket).parent
    for address in ("dvlad.sock", "./dvlad.sock", f"../{here.name}/dvlad.sock"):
        listed = dvla_in(here, "--host", address, "jobs", "--json")
        assert listed.returncode == 0 and isinstance(json.loads(listed.stdout), list), (address, listed.stderr)
