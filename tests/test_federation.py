"""Three real dvlads federated on 127.0.0.1 (separate state dirs, ports and secret files): heartbeats,
signed requests refused and logged, leases, multi-node jobs and a peer killed mid-job
(docs/federation.md)."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from dvlad.fed.signing import sign
from dvlad.testing import LONG, Dvlad, federation
from tests.test_daemon_api import as_user, users  # noqa: F401 (a fixture)

SECRET = "cluster-secret-" + "0123456789abcdef" * 3
FAST = {"heartbeat_s": 0.3, "down_after_s": 2.0, "lease_ttl_s": 1.5}
"""Short periods, so that the tests see a peer go down and a lease expire within seconds."""


def tcp(addr: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
        raw: bytes | None = None) -> tuple[int, Any]:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload) if payload else None
    finally:
        conn.close()


def signed(addr: str, method: str, path: str, body: Any = None, *, secret: str = SECRET, node: str = "node1",
           **kw: Any) -> tuple[int, Any, dict[str, str]]:
    """A request signed as peer ``node``; the reply and the headers it carried (to replay them)."""
    data = json.dumps(body).encode() if body is not None else b""
    headers = sign(secret.encode(), method, path, data, node, **kw)
    return (*tcp(addr, method, path, headers=headers, raw=data), headers)


def wait_for(check, timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def nodes(daemon: Dvlad) -> dict[str, dict[str, Any]]:
    status, body = daemon.call("GET", "/v1/nodes")
    assert status == 200, body
    return {row["name"]: row for row in body["nodes"]}


def all_up(daemon: Dvlad, count: int = 3) -> bool:
    rows = nodes(daemon)
    return len(rows) == count and all(r["state"] == "up" for r in rows.values())


def metrics(daemon: Dvlad) -> dict[str, float]:
    """``/metrics`` as {name with its labels: value}."""
    status, text = daemon.call("GET", "/metrics")
    assert status == 200, text
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                                   if line and not line.startswith("#"))}


def documented(daemon: Dvlad, method: str, path: str, status: int, body: Any) -> None:
    """Assert that ``body``, a reply of ``status`` to ``method path`` (the route's pattern), is what
    ``/v1/openapi.json`` says it is."""
    doc = daemon.call("GET", "/v1/openapi.json")[1]
    reply = doc["paths"][path][method.lower()]["responses"][str(status)]["content"]["application/json"]["schema"]
    Draft202012Validator(reply).validate(body)


def start_cluster(make: Callable[..., Dvlad], count: int = 3, secrets: list[str] | None = None, wait: bool = True,
                  **settings: float | str) -> tuple[list[Dvlad], list[str]]:
    """``count`` real dvlads federated on 127.0.0.1 (``node0``, ``node1``, ...), with :data:`FAST` periods
    unless ``settings`` say otherwise and the same secret unless ``secrets`` are given, started; with
    ``wait``, returned once each of them lists every node up. Their daemons and addresses."""
    daemons = [make(start=False) for _ in range(count)]
    addrs = federation(daemons, secrets or [SECRET] * count, **{**FAST, **settings})
    for daemon in daemons:
        daemon.start()
    for daemon in daemons if wait else ():
        wait_for(lambda d=daemon: all_up(d, count), what=f"all {count} nodes up")
    return daemons, addrs


@pytest.fixture(scope="module")
def cluster(module_dvlads) -> tuple[list[Dvlad], list[str]]:
    return start_cluster(module_dvlads)


@pytest.mark.slow
def test_every_node_lists_all_three_with_heartbeat_ages(cluster):
    daemons, addrs = cluster
    for i, daemon in enumerate(daemons):
        rows = nodes(daemon)
        assert set(rows) == {"node0", "node1", "node2"}
        assert rows[f"node{i}"]["last_heartbeat_age_s"] == 0.0 and rows[f"node{i}"]["addr"] == addrs[i]
        for name, row in rows.items():
            assert row["state"] == "up"
            assert 0 <= row["last_heartbeat_age_s"] < FAST["down_after_s"], (name, row)
            assert row["cpu_slots"] > 0 and row["ram_total"] > 0 and row["cpu_count"] > 0
            assert {"free_gpus", "pools", "topology", "leases"} <= set(row)
    env = {**os.environ, "COLUMNS": "200", "DVLA_HOST": daemons[0].socket}
    out = subprocess.run([sys.executable, "-m", "dvla.cli", "nodes"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("node0", "node1", "node2"):
        assert name in out.stdout
    assert out.stdout.count(" s ago") == 2 and "HEARTBEAT" in out.stdout and "RAM" in out.stdout


@pytest.mark.slow
def test_bad_signatures_old_timestamps_and_replays_are_refused_and_logged(cluster):
    daemons, addrs = cluster
    status, body, headers = signed(addrs[0], "POST", "/v1/fed/leases", {"job_id": 1, "gpus": 0, "cpus": 1})
    assert status == 201, body
    assert signed(addrs[0], "DELETE", f"/v1/fed/leases/{body['id']}")[0] == 200
    replay = tcp(addrs[0], "POST", "/v1/fed/leases", {"job_id": 1, "gpus": 0, "cpus": 1}, headers=headers)
    assert replay[0] == 401 and "replayed nonce" in replay[1]["reason"]
    old = signed(addrs[0], "POST", "/v1/fed/leases", {"job_id": 1, "gpus": 0, "cpus": 1}, now=time.time() - 60)
    assert old[0] == 401 and "window" in old[1]["reason"]
    forged = signed(addrs[0], "POST", "/v1/fed/leases", {"job_id": 1, "gpus": 0, "cpus": 1}, secret="x" * 40)
    assert forged[0] == 401 and "bad signature" in forged[1]["reason"]
    altered = tcp(addrs[0], "POST", "/v1/fed/leases", {"job_id": 1, "gpus": 0, "cpus": 9},
                  headers=sign(SECRET.encode(), "POST", "/v1/fed/leases", b"{}", "node1"))
    assert altered[0] == 401 and "bad signature" in altered[1]["reason"]
    assert not nodes(daemons[0])["node0"]["leases"]  # none of them took anything
    log = wait_for(lambda: "peer request refused" in daemons[0].stderr.read_text() and daemons[0].stderr.read_text(),
                   what="a refusal logged")
    refusals = [json.loads(line) for line in log.splitlines() if '"peer request refused"' in line]
    assert refusals[0]["level"] == "warning"
    assert refusals[0]["peer"].startswith("127.0.0.1:") and "replayed nonce" in refusals[0]["reason"]
    assert len(refusals) == 1  # the next three from the same address within 10 s are counted, not logged


@pytest.mark.slow
def test_user_tokens_never_open_peer_routes_nor_signatures_user_routes(cluster):
    daemons, addrs = cluster
    as_user = tcp(addrs[0], "POST", "/v1/fed/leases", {"job_id": 1, "gpus": 0, "cpus": 1},
                  headers={"Authorization": "Bearer tok"})
    assert as_user[0] == 401 and "not a signed peer request" in as_user[1]["reason"]
    assert tcp(addrs[0], "GET", "/v1/jobs", headers={"Authorization": "Bearer tok"})[0] == 200
    as_peer = signed(addrs[0], "GET", "/v1/jobs")
    assert as_peer[0] == 401 and "Bearer" in as_peer[1]["reason"]
    local = daemons[0].call("POST", "/v1/fed/leases", {"job_id": 1, "gpus": 0, "cpus": 1})  # the Unix socket: no
    assert local[0] == 401


@pytest.mark.slow
def test_a_lease_takes_its_room_until_it_expires(cluster):
    daemons, addrs = cluster
    before = nodes(daemons[1])["node1"]["free_cpu_slots"]
    status, lease, _ = signed(addrs[1], "POST", "/v1/fed/leases", {"job_id": 5, "gpus": 0, "cpus": 1}, node="node0")
    assert status == 201, lease
    documented(daemons[1], "POST", "/v1/fed/leases", 201, lease)
    row = nodes(daemons[1])["node1"]
    assert row["free_cpu_slots"] == before - 1 and [x["id"] for x in row["leases"]] == [lease["id"]]
    granted = metrics(daemons[1])
    assert granted['dvlad_fed_leases_granted{node="node0"}'] == 1
    assert granted['dvlad_fed_leases_granted{node="node2"}'] == 0
    assert granted['dvlad_fed_leases_granted_cpu_slots{node="node0"}'] == 1
    assert granted['dvlad_fed_leases_granted_gpus{node="node0"}'] == 0
    renewed = signed(addrs[1], "POST", f"/v1/fed/leases/{lease['id']}/renew", node="node0")
    assert renewed[0] == 200 and renewed[1]["part"] is None
    documented(daemons[1], "POST", "/v1/fed/leases/{lease_id}/renew", 200, renewed[1])
    assert signed(addrs[1], "POST", f"/v1/fed/leases/{lease['id']}/renew", node="node2")[0] == 404  # not node2's
    wait_for(lambda: not nodes(daemons[1])["node1"]["leases"], timeout=FAST["lease_ttl_s"] + 3, what="lease expired")
    assert nodes(daemons[1])["node1"]["free_cpu_slots"] == before
    too_big = signed(addrs[1], "POST", "/v1/fed/leases", {"job_id": 5, "gpus": 0, "cpus": 10**6}, node="node0")
    assert too_big[0] == 409 and "CPU slots are free" in too_big[1]["reason"]
    documented(daemons[1], "POST", "/v1/fed/leases", 409, too_big[1])
    assert metrics(daemons[1])['dvlad_fed_leases_granted{node="node0"}'] == 0


@pytest.mark.slow
def test_the_peer_routes_take_the_bodies_the_openapi_document_states(cluster):
    daemons, addrs = cluster
    doc = daemons[0].call("GET", "/v1/openapi.json")[1]
    required = doc["paths"]["/v1/fed/leases"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "required"]
    for key in required:  # each required key missing, or of the wrong type: 400 naming it
        missing, wrong = {k: 0 for k in required if k != key}, {**dict.fromkeys(required, 0), key: "1"}
        for body in (missing, wrong):
            status, reply, _ = signed(addrs[0], "POST", "/v1/fed/leases", body)
            assert (status, reply["field"]) == (400, key), reply
            documented(daemons[0], "POST", "/v1/fed/leases", 400, reply)
    beat = signed(addrs[0], "POST", "/v1/fed/heartbeat", nodes(daemons[1])["node1"], node="node1")
    assert beat[0] == 200, beat[1]
    documented(daemons[0], "POST", "/v1/fed/heartbeat", 200, beat[1])
    heartbeat = doc["paths"]["/v1/fed/heartbeat"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    Draft202012Validator(heartbeat).validate(nodes(daemons[1])["node1"])  # what a peer sends, as documented
    stranger = signed(addrs[0], "POST", "/v1/fed/heartbeat", {"name": "x", "addr": "10.9.9.9:1"}, node="x")
    assert stranger[0] == 403 and stranger[1]["field"] == "addr"
    part = doc["paths"]["/v1/fed/parts"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    status, lease, _ = signed(addrs[0], "POST", "/v1/fed/leases", {"job_id": 7, "gpus": 0, "cpus": 1})
    assert status == 201, lease
    env = dict.fromkeys(part["properties"]["env"]["required"], "1")
    for bad, field in (({"env": {**env, "LD_PRELOAD": "/x.so"}}, "env"), ({"env": {}}, "env"), ({"user": ""}, "user")):
        body = {"lease_id": lease["id"], "user": pwd.getpwuid(os.geteuid()).pw_name, "spec": LONG, "env": env, **bad}
        status, reply, _ = signed(addrs[0], "POST", "/v1/fed/parts", body)
        assert (status, reply["field"]) == (400, field), reply
    assert signed(addrs[0], "GET", "/v1/fed/parts/999999")[0] == 404
    released = signed(addrs[0], "DELETE", f"/v1/fed/leases/{lease['id']}")
    assert released[0] == 200
    documented(daemons[0], "DELETE", "/v1/fed/leases/{lease_id}", 200, released[1])


@pytest.mark.slow
def test_a_part_for_a_user_missing_on_the_peer_is_refused(cluster):
    _, addrs = cluster
    status, lease, _ = signed(addrs[2], "POST", "/v1/fed/leases", {"job_id": 6, "gpus": 0, "cpus": 1}, node="node0")
    assert status == 201
    env = dict.fromkeys(("DVLA_NODES", "DVLA_NODE_RANK", "DVLA_FED_RENDEZVOUS", "DVLA_RANK_OFFSET", "DVLA_WORLD"), "1")
    refused = signed(addrs[2], "POST", "/v1/fed/parts", {"lease_id": lease["id"], "user": "no-such-user-here",
                                                         "spec": LONG, "env": env}, node="node0")
    assert refused[0] == 403 and "does not exist on this node" in refused[1]["reason"]
    assert signed(addrs[2], "DELETE", f"/v1/fed/leases/{lease['id']}", node="node0")[0] == 200


@pytest.mark.slow
def test_a_peer_with_another_secret_cannot_join(dvlads):
    daemons, _ = start_cluster(dvlads, 2, [SECRET, "another-" + SECRET], wait=False)
    time.sleep(FAST["down_after_s"])
    for i, daemon in enumerate(daemons):
        (peer,) = (row for name, row in nodes(daemon).items() if name != f"node{i}")
        assert peer["state"] == "down" and peer["last_heartbeat_age_s"] is None
        assert "bad signature" in daemon.stderr.read_text()


def multi_node_job(daemon: Dvlad, spec: dict[str, Any]) -> int:
    status, body = daemon.call("POST", "/v1/jobs", {"spec": spec})
    assert status == 201, body
    return body["job"]["id"]


@pytest.mark.slow
def test_killing_a_peer_mid_job_fails_the_job_and_frees_every_lease(dvlads):
    daemons, _ = start_cluster(dvlads)
    job_id = multi_node_job(daemons[0], {**LONG, "job": {"name": "two-nodes"}, "placement": {"nodes": 2}})
    job = daemons[0].wait_state(job_id, {"running", "failed"}, timeout=60)
    assert job["state"] == "running", job["reason"]
    (part,) = job["parts"]
    assert "node 0 of 2" in job["reason"] and part["node"] in job["reason"]
    peer = daemons[int(part["node"][-1])]
    other = daemons[3 - int(part["node"][-1])]
    assert [lease["job_id"] for lease in nodes(peer)[part["node"]]["leases"]] == [job_id]
    peer_job = peer.job(part["part_id"])
    assert peer_job["state"] == "running" and f"of job {job_id} on node0" in peer_job["reason"]
    coordinating, hosting = metrics(daemons[0]), metrics(peer)
    assert coordinating["dvlad_fed_jobs_coordinated"] == 1 and hosting["dvlad_fed_jobs_coordinated"] == 0
    for name, held in ((part["node"], 1), (f"node{3 - int(part['node'][-1])}", 0)):
        assert coordinating[f'dvlad_fed_leases_held{{node="{name}"}}'] == held
        assert coordinating[f'dvlad_fed_leases_held_cpu_slots{{node="{name}"}}'] == held * job["cpus"]
        assert coordinating[f'dvlad_fed_leases_held_gpus{{node="{name}"}}'] == held * job["gpus"]
    assert hosting['dvlad_fed_leases_granted{node="node0"}'] == 1
    assert hosting['dvlad_fed_leases_held{node="node0"}'] == 0
    assert hosting['dvlad_fed_leases_granted_cpu_slots{node="node0"}'] == job["cpus"]
    for name in ("node1", "node2"):
        assert coordinating[f'dvlad_fed_node_up{{node="{name}"}}'] == 1
        assert 0 <= coordinating[f'dvlad_fed_heartbeat_age_seconds{{node="{name}"}}'] < FAST["down_after_s"]
    killed_at = time.monotonic()
    peer.kill9()
    failed = daemons[0].wait_state(job_id, {"failed", "succeeded", "cancelled"}, timeout=30)
    took = time.monotonic() - killed_at
    assert failed["state"] == "failed" and f"node {part['node']} down: no heartbeat for" in failed["reason"]
    assert took < FAST["down_after_s"] + 3 * FAST["heartbeat_s"] + 2, took
    for survivor in (daemons[0], other):
        rows = nodes(survivor)
        assert all(not row["leases"] for row in rows.values() if row["state"] == "up")
    after = metrics(daemons[0])
    assert after[f'dvlad_fed_node_up{{node="{part["node"]}"}}'] == 0
    assert after[f'dvlad_fed_heartbeat_age_seconds{{node="{part["node"]}"}}'] >= FAST["down_after_s"]
    wait_for(lambda: metrics(daemons[0])["dvlad_fed_jobs_coordinated"] == 0, what="the failed job wound down")
    wait_for(lambda: nodes(daemons[0])["node0"]["running_jobs"] == 0, what="the coordinator's part stopped")


QUICK_REACH = {"job": {"name": "reach-two-nodes", "seed": 3}, "resources": {"device": "cpu", "torch_threads": 1},
               "env": {"name": "reach", "num_envs": 8, "groups": 2, "workers": 1},
               "policy": {"args": {"d_model": 16, "layers": 1, "heads": 2, "patch_grid": 2}},
               "algo": {"update_epochs": 1, "minibatches": 2}, "pipeline": {"segment_steps": 8},
               "train": {"total_env_steps": 1280, "max_minutes": 0, "stop_at_success": 0, "checkpoint_every": 0,
                         "resume": False},
               "placement": {"nodes": 2}}
"""A reach job on two nodes that ends within a minute or two (tests/test_node_parts.py's)."""


def no_leases_anywhere(daemons: list[Dvlad]) -> bool:
    return all(not row["leases"] for d in daemons if d.proc.poll() is None for row in nodes(d).values()
               if row["state"] == "up")


@pytest.mark.slow
def test_a_two_node_job_succeeds_with_a_part_on_a_peer_and_leaves_no_lease(cluster):
    daemons, _ = cluster
    job_id = multi_node_job(daemons[1], QUICK_REACH)
    job = daemons[1].wait_state(job_id, {"running", "succeeded", "failed"}, timeout=60)
    assert job["state"] != "failed", job["reason"]
    done = daemons[1].wait_state(job_id, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert done["state"] == "succeeded", done["reason"]
    started = next(e for e in done["events"] if e["to_state"] == "running")["reason"]
    peer_name = started.rsplit("with ", 1)[1].split(" ")[0]
    part_id = int(started.rsplit("(part ", 1)[1].rstrip(")"))
    peer = daemons[int(peer_name[-1])]
    part = peer.wait_state(part_id, {"succeeded", "failed", "cancelled"}, timeout=60)
    assert part["state"] == "succeeded", part["reason"]
    # the two parts trained as one job: the budget counts both nodes' steps, the weights agree after the last update
    first = json.loads((daemons[1].state_dir / "jobs" / str(job_id) / "run" / "summary.json").read_text())
    second = json.loads((peer.state_dir / "jobs" / str(part_id) / "run" / "summary.json").read_text())
    assert first["node_env_steps"] > 0 and second["node_env_steps"] > 0
    assert first["weights_digest"] == second["weights_digest"] and first["checkpoint"] and not second["checkpoint"]
    assert daemons[1].call("GET", f"/v1/jobs/{job_id}/metrics")[1]["rows"]  # node 0 writes the job's rows
    wait_for(lambda: no_leases_anywhere(daemons), what="every lease released")


@pytest.mark.slow
def test_cancelling_a_multi_node_job_stops_its_parts_and_frees_their_leases(cluster):
    daemons, _ = cluster
    job_id = multi_node_job(daemons[2], {**LONG, "placement": {"nodes": 3}})
    job = daemons[2].wait_state(job_id, {"running", "failed"}, timeout=60)
    assert job["state"] == "running", job["reason"]
    assert sorted(p["node"] for p in job["parts"]) == ["node0", "node1"]
    assert daemons[2].call("POST", f"/v1/jobs/{job_id}/cancel")[0] == 200
    assert daemons[2].wait_state(job_id, {"cancelled", "failed", "succeeded"}, timeout=30)["state"] == "cancelled"
    for part in job["parts"]:
        stopped = daemons[int(part["node"][-1])].wait_state(part["part_id"], {"cancelled", "failed", "succeeded"},
                                                            timeout=30)
        assert stopped["state"] == "cancelled" and "coordinator node2" in stopped["reason"]
    wait_for(lambda: no_leases_anywhere(daemons), what="every lease released")


@pytest.mark.slow
def test_a_job_asking_more_nodes_than_the_cluster_has_is_refused_at_submit(cluster):
    daemons, _ = cluster
    status, body = daemons[0].call("POST", "/v1/jobs", {"spec": {**LONG, "placement": {"nodes": 4}}})
    assert status == 409 and body["field"] == "spec.placement.nodes" and "2 peers" in body["reason"]


@pytest.mark.slow
def test_a_restarted_coordinator_finds_its_multi_node_job_again(dvlads):
    daemons, _ = start_cluster(dvlads, 2, lease_ttl_s=30.0)
    job_id = multi_node_job(daemons[0], {**LONG, "placement": {"nodes": 2}})
    job = daemons[0].wait_state(job_id, {"running", "failed"}, timeout=60)
    assert job["state"] == "running", job["reason"]
    daemons[0].stop()  # SIGTERM: its jobs keep running, to be re-adopted
    daemons[0].start()
    again = daemons[0].job(job_id)
    assert again["state"] == "running" and again["parts"] == job["parts"]
    lease = nodes(daemons[1])["node1"]["leases"][0]
    time.sleep(4 * FAST["heartbeat_s"])
    renewed = nodes(daemons[1])["node1"]["leases"][0]
    assert renewed["id"] == lease["id"] and renewed["expires_in_s"] > lease["expires_in_s"] - 0.5
    assert daemons[1].job(job["parts"][0]["part_id"])["state"] == "running"
    daemons[0].call("POST", f"/v1/jobs/{job_id}/cancel")
    wait_for(lambda: no_leases_anywhere(daemons), what="every lease released")


@pytest.mark.slow
def test_a_killed_coordinator_leaves_its_parts_stopped_when_their_leases_expire(dvlads):
    daemons, _ = start_cluster(dvlads, 2)
    job_id = multi_node_job(daemons[0], {**LONG, "placement": {"nodes": 2}})
    job = daemons[0].wait_state(job_id, {"running", "failed"}, timeout=60)
    assert job["state"] == "running", job["reason"]
    daemons[0].kill9()
    part = daemons[1].wait_state(job["parts"][0]["part_id"], {"cancelled", "failed", "succeeded"},
                                 timeout=FAST["lease_ttl_s"] + 10)
    assert part["state"] == "cancelled" and "lease expired" in part["reason"]
    assert not nodes(daemons[1])["node1"]["leases"]


@pytest.mark.slow
def test_a_part_runs_as_the_user_who_submitted_to_the_coordinator(cluster, users):  # noqa: F811
    daemons, _ = cluster
    user = users[0]
    status, body = as_user(user, daemons[0].socket, "POST", "/v1/jobs", {"spec": {**LONG, "placement": {"nodes": 2}}})
    assert status == 201, body
    job_id = body["job"]["id"]
    job = daemons[0].wait_state(job_id, {"running", "failed"}, timeout=60)
    assert job["user"] == user
    # its part on a peer is a job of that user, looked up there by name (where the checkout is not readable
    # by the test user, the part fails to exec; its record still shows whom it was started as)
    parts = [j for d in daemons[1:] for j in d.call("GET", "/v1/jobs?all=1")[1]["jobs"]
             if f"of job {job_id} on node0" in j["reason"] or j["user"] == user]
    assert [(j["user"], j["uid"]) for j in parts] == [(user, pwd.getpwnam(user).pw_uid)]
    assert job["state"] == "running" or "Permission denied" in job["reason"], job["reason"]
    daemons[0].call("POST", f"/v1/jobs/{job_id}/cancel")
    wait_for(lambda: no_leases_anywhere(daemons), what="every lease released")


@pytest.mark.slow
def test_peers_talk_over_tls_when_certificates_are_configured(dvlads, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    _, addrs = start_cluster(dvlads, 2, tls_cert=str(cert), tls_key=str(key), tls_ca=str(cert))
    with pytest.raises((http.client.HTTPException, ConnectionError)):  # plain HTTP to the TLS listener gets nowhere
        signed(addrs[0], "POST", "/v1/fed/leases", {"job_id": 1, "gpus": 0, "cpus": 1})


@pytest.mark.slow
def test_a_part_that_dies_on_its_peer_fails_the_job_naming_the_node(cluster):
    daemons, _ = cluster
    job_id = multi_node_job(daemons[0], {**LONG, "placement": {"nodes": 2}})
    job = daemons[0].wait_state(job_id, {"running", "failed"}, timeout=60)
    assert job["state"] == "running", job["reason"]
    (part,) = job["parts"]
    peer = daemons[int(part["node"][-1])]
    os.killpg(peer.job(part["part_id"])["pid"], signal.SIGKILL)  # the part and its lanes, as an OOM kill would
    failed = daemons[0].wait_state(job_id, {"failed", "succeeded", "cancelled"}, timeout=60)
    # the coordinator hears it from the peer (the part failed), or node 0's ranks saw node 1's go first
    assert failed["state"] == "failed"
    assert f"node {part['node']} part {part['part_id']} failed: killed by signal SIGKILL" in failed["reason"] \
        or "node 1's ranks went away" in failed["reason"], failed["reason"]
    wait_for(lambda: no_leases_anywhere(daemons), what="every lease released")
    wait_for(lambda: all(nodes(d)[f"node{i}"]["running_jobs"] == 0 for i, d in enumerate(daemons)),
             what="no part left running")


@pytest.mark.slow
def test_a_job_that_asks_restarts_from_its_checkpoint_when_a_node_goes_down(dvlads):
    daemons, _ = start_cluster(dvlads)
    spec = {**LONG, "placement": {"nodes": 2},
            "train": {**LONG["train"], "checkpoint_every": 1, "restart_on_node_failure": True}}
    job_id = multi_node_job(daemons[0], spec)
    job = daemons[0].wait_state(job_id, {"running", "failed"}, timeout=60)
    assert job["state"] == "running", job["reason"]
    wait_for(lambda: daemons[0].call("GET", f"/v1/jobs/{job_id}/checkpoint")[0] == 200, timeout=120,
             what="a checkpoint written")
    (part,) = job["parts"]
    daemons[int(part["node"][-1])].kill9()
    failed = daemons[0].wait_state(job_id, {"failed", "succeeded", "cancelled"}, timeout=30)
    assert f"node {part['node']} down" in failed["reason"] and "from its last checkpoint" in failed["reason"]
    again_id = int(failed["reason"].split("restarted as job ")[1].split()[0])
    again = daemons[0].wait_state(again_id, {"running", "failed"}, timeout=60)
    assert again["state"] == "running", again["reason"]
    assert again["spec"]["policy"]["checkpoint"] == job["run_dir"]
    (moved,) = again["parts"]
    assert moved["node"] not in (part["node"], "node0")  # the node still up
    wait_for(lambda: daemons[0].call("GET", f"/v1/jobs/{again_id}/metrics")[1]["rows"], timeout=180,
             what="the restarted job trains from the checkpoint")
    daemons[0].call("POST", f"/v1/jobs/{again_id}/cancel")
    wait_for(lambda: no_leases_anywhere(daemons), what="every lease released")
