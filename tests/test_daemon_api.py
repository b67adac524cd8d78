"""The /v1 API of a real dvlad on a real Unix socket: bodies, errors, identities, the OpenAPI document.

Nothing runs here (``running_jobs = 0``): these tests are about the API, not training.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest

from dvlad import testing
from dvlad.fed.routes import FED_ROUTES
from dvlad.server.app import ROUTES
from dvlad.testing import FIXTURE, Dvlad, request

pytestmark = pytest.mark.slow  # every test talks to a real dvlad

ROOMY = "[node]\ncpu_slots = 8\n"
"""Room for the default spec's 2 CPU slots (one per env worker) on any machine: a bigger job is refused."""
QUEUED_ONLY = "max_body_bytes = 4096\n" + ROOMY + "[limits.default]\nrunning_jobs = 0\n"
TEST_USERS = ("dvlatest1", "dvlatest2")


@pytest.fixture(scope="module")
def dvlad(module_dvlads):
    return module_dvlads(QUEUED_ONLY, recorded_gpu=True)


@pytest.fixture(scope="session")
def users():
    """Two real Unix users (created here, removed after), or a skip when not root."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("creating test users needs root and useradd (CI runs as root)")
    made = []
    for name in TEST_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
            made.append(name)
    yield TEST_USERS
    for name in made:
        subprocess.run(["userdel", name], check=False)


def as_user(user: str, sock: str, method: str, path: str, body=None) -> tuple[int, dict]:
    """A request made by a process running as ``user``: SO_PEERCRED gives the daemon that uid."""
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"  # the venv's lives under /root (0700)
    script = Path(testing.__file__)
    out = subprocess.run([python, str(script), sock, method, path, *([json.dumps(body)] if body is not None else [])],
                         user=user, capture_output=True, text=True, check=True, cwd="/")
    reply = json.loads(out.stdout)
    return reply["status"], reply["body"]


def submit(d: Dvlad, spec=None, **extra):
    return d.call("POST", "/v1/jobs", {"spec": spec if spec is not None else {"job": {"name": "api"}}, **extra})


def test_submit_is_idempotent_per_key(dvlad):
    status, first = submit(dvlad, idempotency_key="same-key")
    assert status == 201 and first["created"] and first["job"]["state"] == "queued"
    status, again = submit(dvlad, idempotency_key="same-key")
    assert status == 200 and not again["created"] and again["job"]["id"] == first["job"]["id"]
    job = dvlad.job(first["job"]["id"])
    assert job["spec"]["env"]["num_envs"] == 16  # the resolved spec, defaults filled in
    assert [e["to_state"] for e in job["events"]] == ["queued"]


def test_msgpack_in_and_out(dvlad):
    body = msgpack.packb({"spec": {"job": {"name": "packed"}}, "priority": 3})
    conn_status, reply = dvlad.call("POST", "/v1/jobs", raw=body, content_type="application/msgpack")
    assert conn_status == 201 and reply["job"]["priority"] == 3
    from dvlad.testing import UnixConnection

    conn = UnixConnection(dvlad.socket)
    conn.request("GET", f"/v1/jobs/{reply['job']['id']}", headers={"Accept": "application/msgpack"})
    resp = conn.getresponse()
    assert resp.getheader("Content-Type").startswith("application/msgpack")
    assert msgpack.unpackb(resp.read())["name"] == "packed"
    conn.close()


BAD_BODIES = [
    # (what, raw body, content type, status, code, field)
    ("not JSON", b"{not json", "application/json", 400, "bad_body", ""),
    ("not msgpack", b"\xc1\xc1", "application/msgpack", 400, "bad_body", ""),
    ("oversized", b'{"spec": "' + b"x" * 10_000 + b'"}', "application/json", 413, "too_large", ""),
    ("plain text", b"hello", "text/plain", 415, "unsupported_media_type", "Content-Type"),
    ("a list", b"[1, 2]", "application/json", 400, "bad_body", ""),
    ("unknown field", b'{"spec": {}, "uid": 0}', "application/json", 400, "unknown_field", "uid"),
    ("wrong type", b'{"spec": {"env": {"num_envs": "four"}}}', "application/json", 400, "invalid_spec",
     "spec.env.num_envs"),
    ("unknown spec key", b'{"spec": {"env": {"nmu_envs": 4}}}', "application/json", 400, "invalid_spec",
     "spec.env.nmu_envs"),
    ("spec not a table", b'{"spec": 7}', "application/json", 400, "bad_field", "spec"),
    ("path traversal in the name", b'{"spec": {"job": {"name": "../../etc/passwd"}}}', "application/json", 400,
     "invalid_spec", "spec.job.name"),
    ("path traversal in the key", b'{"spec": {}, "idempotency_key": "../../x"}', "application/json", 400,
     "bad_field", "idempotency_key"),
    ("priority as text", b'{"spec": {}, "priority": "high"}', "application/json", 400, "bad_field", "priority"),
    ("nested too deep", b'{"spec": {"policy": {"args": {"a": ' + b"[" * 200 + b"]" * 200 + b"}}}}",
     "application/json", 400, "bad_body", ""),
    ("NUL bytes", b'{"spec": {"job": {"name": "a\\u0000b"}}}', "application/json", 400, "invalid_spec",
     "spec.job.name"),
    # numbers a client could not decode back (msgpack 500'd on GET) or strict JSON cannot write
    ("integer past 64 bits", b'{"spec": {"env": {"args": {"seed": 18446744073709551616}}}}', "application/json",
     400, "out_of_range", "spec.env.args.seed"),
    ("integer past 63 bits in msgpack", msgpack.packb({"spec": {"env": {"args": {"seed": 1 << 63}}}}),
     "application/msgpack", 400, "out_of_range", "spec.env.args.seed"),
    ("NaN", b'{"spec": {"env": {"args": {"x": NaN}}}}', "application/json", 400, "out_of_range", "spec.env.args.x"),
    ("Infinity in a list", b'{"spec": {"policy": {"args": {"w": [1, -Infinity]}}}}', "application/json", 400,
     "out_of_range", "spec.policy.args.w[1]"),
    ("a float that overflows", b'{"spec": {"env": {"args": {"x": 1e400}}}}', "application/json", 400,
     "out_of_range", "spec.env.args.x"),
]


@pytest.mark.parametrize("what,raw,ctype,status,code,field", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_get_a_clear_4xx_and_the_daemon_keeps_serving(dvlad, what, raw, ctype, status, code, field):
    got, body = dvlad.call("POST", "/v1/jobs", raw=raw, content_type=ctype)
    assert (got, body["code"], body["field"]) == (status, code, field), body
    assert body["reason"]
    assert dvlad.call("GET", "/v1/nodes")[0] == 200


@pytest.mark.parametrize("path,status", [("/v1/jobs/..%2F..%2Fetc%2Fpasswd", 404), ("/v1/jobs/999999", 404),
                                         ("/v1/jobs/-1", 404), ("/v1/jobs/%C2%B9", 404), ("/v1/nope", 404),
                                         ("/v1/jobs?limit=x", 400), ("/v1/jobs?limit=1001", 400),
                                         ("/v1/jobs?before=0", 400), ("/v1/jobs/1/logs?offset=-5", 400)])
def test_bad_paths_and_queries(dvlad, path, status):
    got, body = dvlad.call("GET", path)
    assert got == status and {"code", "field", "reason"} <= set(body), body


def test_listings_are_pages_of_100_unless_asked_and_before_pages_back(dvlad):
    """A listing costs its page, however long the history (issue 17: 1000 records a listing by default)."""
    made = [submit(dvlad, {"job": {"name": f"page-{i}"}})[1]["job"]["id"] for i in range(101)]
    status, page = dvlad.call("GET", "/v1/jobs")
    ids = [j["id"] for j in page["jobs"]]
    assert status == 200 and len(ids) == 100 and ids == sorted(ids) and ids[-1] == made[-1]
    status, older = dvlad.call("GET", f"/v1/jobs?before={ids[0]}&limit=1000")
    older_ids = [j["id"] for j in older["jobs"]]
    assert status == 200 and made[0] in older_ids and max(older_ids) < ids[0]


def test_wrong_method_is_an_error_object_with_the_allowed_methods(dvlad):
    got, body = dvlad.call("DELETE", "/v1/jobs")
    assert got == 405 and body["code"] == "method_not_allowed"
    conn = testing.UnixConnection(dvlad.socket)
    conn.request("PUT", "/v1/jobs/1/cancel")
    reply = conn.getresponse()
    assert reply.status == 405 and reply.getheader("Allow") == "POST"  # RFC 9110: a 405 says what is allowed
    conn.close()


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"the recorded topology {FIXTURE} is not in this checkout")
def test_topology_and_nodes_replay_the_recorded_machine(dvlad):
    status, topo = dvlad.call("GET", "/v1/topology")
    assert status == 200 and topo["source"].startswith("fixture:")
    assert topo["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
    status, nodes = dvlad.call("GET", "/v1/nodes")
    assert [g["index"] for g in nodes["nodes"][0]["gpus"]] == [0] and nodes["nodes"][0]["gpus"][0]["free"]


def test_metrics_are_prometheus_text(dvlad):
    submit(dvlad)
    status, text = dvlad.call("GET", "/metrics")
    assert status == 200
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines["dvlad_queue_length"]) >= 1 and float(lines['dvlad_jobs{state="queued"}']) >= 1
    responsiveness = ("dvlad_schedule_pass_seconds", "dvlad_schedule_pass_queued", "dvlad_event_loop_lag_max_seconds")
    assert all(float(lines[name]) >= 0 for name in responsiveness)
    assert not [name for name in lines if name.startswith("dvlad_fed_")]  # federation's only where it is on


def test_openapi_matches_the_routes_and_the_replies(dvlad):
    status, doc = dvlad.call("GET", "/v1/openapi.json")
    assert status == 200
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in [*ROUTES, *FED_ROUTES]}
    for path, ops in doc["paths"].items():  # peers' routes: signed requests only, never a user's credentials
        for op in ops.values():
            assert (op.get("security") == [{"peerSignature": []}]) == path.startswith("/v1/fed/"), path
    assert "never open" in doc["components"]["securitySchemes"]["peerSignature"]["description"]
    served = {(r.method, r.path) for r in ROUTES}
    job_id = submit(dvlad)[1]["job"]["id"]
    for method, path in sorted(served):
        if method != "GET":
            continue
        url = path.replace("{job_id}", str(job_id))
        got, body = dvlad.call(method, url)
        if path.endswith("/checkpoint"):  # a queued job has none: the documented 404
            assert got == 404 and body["code"] == "not_found", body
            continue
        assert got == 200, (url, body)
        schema = doc["paths"][path]["get"]["responses"]["200"]["content"]
        media, spec = next(iter(schema.items()))
        if media == "application/json":
            assert set(spec["schema"]["required"]) <= set(body), (url, set(spec["schema"]["required"]) - set(body))
            items = spec["schema"].get("properties", {})
            for key, sub in items.items():
                if sub.get("items", {}).get("required") and body[key]:
                    assert set(sub["items"]["required"]) <= set(body[key][0]), (url, key)
    status, cancelled = dvlad.call("POST", f"/v1/jobs/{job_id}/cancel")
    assert status == 200 and set(doc["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]["200"]["content"]
                                 ["application/json"]["schema"]["required"]) <= set(cancelled)
    assert cancelled["state"] == "cancelled"
    got, again = dvlad.call("POST", f"/v1/jobs/{job_id}/cancel")
    assert got == 409 and again["code"] == "conflict"


def test_other_users_cannot_see_logs_or_cancel_root_can(dvlad, users):
    alice, bob = users
    status, made = as_user(alice, dvlad.socket, "POST", "/v1/jobs", {"spec": {"job": {"name": "alices"}}})
    assert status == 201 and made["job"]["user"] == alice  # the identity is the socket's, not a field
    job_id = made["job"]["id"]
    for method, path in (("GET", f"/v1/jobs/{job_id}/logs"), ("GET", f"/v1/jobs/{job_id}"),
                         ("POST", f"/v1/jobs/{job_id}/cancel"), ("GET", "/v1/jobs?all=1")):
        status, body = as_user(bob, dvlad.socket, method, path)
        assert status == 403 and body["code"] == "forbidden" and bob in body["reason"], (path, body)
    status, listed = as_user(bob, dvlad.socket, "GET", "/v1/jobs")
    assert status == 200 and all(j["user"] == bob for j in listed["jobs"])
    status, listed = as_user(alice, dvlad.socket, "GET", "/v1/jobs")
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert dvlad.call("GET", f"/v1/jobs/{job_id}/logs")[0] == 200  # root reads it
    assert request(dvlad.socket, "GET", "/v1/jobs?all=1")[0] == 200
    status, cancelled = dvlad.call("POST", f"/v1/jobs/{job_id}/cancel")
    assert status == 200 and cancelled["state"] == "cancelled"
    events = dvlad.job(job_id)["events"]
    assert events[-1]["reason"] == "cancelled by root before it started"


def test_with_users_see_all_everyone_reads_every_job_but_cancels_only_their_own(dvlads, users):
    alice, bob = users
    d = dvlads("users_see_all = true\n" + QUEUED_ONLY)
    job_id = as_user(alice, d.socket, "POST", "/v1/jobs", {"spec": {"job": {"name": "alices"}}})[1]["job"]["id"]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/logs", f"/v1/jobs/{job_id}/metrics"):
        assert as_user(bob, d.socket, "GET", path)[0] == 200, path
    for path in ("/v1/jobs?all=1", f"/v1/jobs?user={alice}"):
        status, listed = as_user(bob, d.socket, "GET", path)
        assert status == 200 and [j["id"] for j in listed["jobs"]] == [job_id], path
    status, seen = as_user(bob, d.socket, "GET", "/v1/events")
    assert status == 200 and {e["job_id"] for e in seen["events"]} == {job_id}
    status, body = as_user(bob, d.socket, "POST", f"/v1/jobs/{job_id}/cancel")
    assert (status, body["reason"]) == (403, f"job {job_id} belongs to {alice}; {bob} may not cancel it")
    assert as_user(alice, d.socket, "POST", f"/v1/jobs/{job_id}/cancel")[1]["state"] == "cancelled"

def test_one_users_latest_jobs_are_filtered_by_the_daemon_before_the_limit(dvlad, users):
    from click.testing import CliRunner

    from dvla.cli.main import cli
    from dvla.client import Client

    alice, bob = users
    theirs = {name: [as_user(name, dvlad.socket, "POST", "/v1/jobs", {"spec": {"job": {"name": f"{name}-{i}"}}})
                     [1]["job"]["id"] for i in range(n)] for name, n in ((alice, 2), (bob, 3))}  # bob's are newer
    status, listed = dvlad.call("GET", f"/v1/jobs?user={alice}&limit=1")
    assert status == 200 and [j["id"] for j in listed["jobs"]] == theirs[alice][-1:]
    with Client(dvlad.socket) as client:
        assert [j["id"] for j in client.jobs(user=alice, limit=2)] == theirs[alice]
        assert {j["user"] for j in client.jobs(user=bob, limit=10)} == {bob}
    shown = CliRunner().invoke(cli, ["jobs", "--user", alice, "--limit", "2", "--json", "--host", dvlad.socket])
    assert shown.exit_code == 0 and [j["id"] for j in json.loads(shown.output)] == theirs[alice], shown.output
    status, own = as_user(bob, dvlad.socket, "GET", f"/v1/jobs?user={bob}&limit=2")
    assert status == 200 and [j["id"] for j in own["jobs"]] == theirs[bob][-2:]
    status, body = as_user(bob, dvlad.socket, "GET", f"/v1/jobs?user={alice}")
    assert (status, body["field"]) == (403, "user") and bob in body["reason"]
    assert dvlad.call("GET", "/v1/jobs?user=")[0] == 400


def test_tcp_needs_a_valid_bearer_token(dvlads):
    import http.client

    d = dvlads(start=False)
    port = d.serve_tcp("# token user\ns3cret-token root\n")
    d.start()
    for header, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                           ({"Authorization": "Bearer s3cret-token"}, 200)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/jobs", headers=header)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == status, body
        conn.close()
    assert body == {"jobs": []}


def test_user_mode_uses_the_runtime_dir_and_home(dvlads):
    d = dvlads(ROOMY, user_mode=True)
    assert (d.state_dir / "dvlad.db").exists()
    status, body = d.call("POST", "/v1/jobs", {"spec": {}, "idempotency_key": "u1"})
    assert status == 201 and body["job"]["user"] == pwd.getpwuid(os.geteuid()).pw_name


def test_events_follow_streams_new_transitions(dvlad):
    from dvlad.testing import UnixConnection

    _, before = dvlad.call("GET", "/v1/events")
    after = before["events"][-1]["id"] if before["events"] else 0
    conn = UnixConnection(dvlad.socket, timeout=10)
    conn.request("GET", f"/v1/events?follow=1&after={after}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("application/x-ndjson")
    job_id = submit(dvlad)[1]["job"]["id"]
    dvlad.call("POST", f"/v1/jobs/{job_id}/cancel")
    seen: list[dict] = []
    buffer = b""
    while len(seen) < 2:
        buffer += resp.read1(4096)
        *lines, buffer = buffer.split(b"\n")
        seen += [json.loads(line) for line in lines if line]
    conn.close()
    assert [(e["job_id"], e["to_state"]) for e in seen] == [(job_id, "queued"), (job_id, "cancelled")]
    assert dvlad.call("GET", "/v1/nodes")[0] == 200  # the dropped stream did not hurt the daemon


def test_a_large_body_under_the_limit_is_read_whole_and_one_over_it_is_refused(dvlads):
    """Half a MiB arrives in many reads; a chunked body (no Content-Length) over the cap is still cut off."""
    from dvlad.testing import UnixConnection

    d = dvlads("[node]\ncpu_slots = 8\n[limits.default]\nrunning_jobs = 0\n")  # the default 1 MiB limit
    blob = "x" * 500_000
    big = {"job": {"name": "big"}, "policy": {"name": "mine.models:make", "args": {"blob": blob}}}  # free-form args
    status, body = submit(d, big)
    assert status == 201, body
    assert d.job(body["job"]["id"])["spec"]["policy"]["args"]["blob"] == blob
    conn = UnixConnection(d.socket)
    chunks = [b'{"spec": {"policy": {"args": {"blob": "', *[b"x" * 65536] * 20, b'"}}}}']
    conn.request("POST", "/v1/jobs", body=iter(chunks), headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    resp = conn.getresponse()
    refused = json.loads(resp.read())
    conn.close()
    assert (resp.status, refused["code"]) == (413, "too_large"), refused
    assert d.call("GET", "/v1/nodes")[0] == 200


def test_openapi_states_the_limits_the_daemon_enforces(dvlad):
    """Every integer query parameter's documented range is exactly what the daemon takes; the submit
    body's size, priority and key limits are the ones it applies (the config's 4096-byte body here)."""
    doc = dvlad.call("GET", "/v1/openapi.json")[1]
    job_id = submit(dvlad)[1]["job"]["id"]
    ranged = [(path, p["name"], p["schema"]) for path, ops in doc["paths"].items() for op in ops.values()
              for p in op.get("parameters", []) if p["in"] == "query" and p["schema"]["type"] == "integer"]
    assert {name for _, name, _ in ranged} == {"limit", "before", "last", "offset", "after"}
    for path, name, schema in ranged:
        url = path.replace("{job_id}", str(job_id))
        for value, ok in ((schema["minimum"], True), (schema["maximum"], True),
                          (schema["minimum"] - 1, False), (schema["maximum"] + 1, False)):
            assert (dvlad.call("GET", f"{url}?{name}={value}")[0] == 200) == ok, (url, name, value)
    post = doc["paths"]["/v1/jobs"]["post"]
    assert post["requestBody"]["x-max-body-bytes"] == 4096
    body = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    for field, value in (("priority", body["priority"]["maximum"] + 1), ("priority", body["priority"]["minimum"] - 1),
                         ("idempotency_key", "k" * (body["idempotency_key"]["maxLength"] + 1))):
        status, reply = dvlad.call("POST", "/v1/jobs", {"spec": {}, field: value})
        assert (status, reply["field"]) == (400, field), reply
    assert dvlad.call("POST", "/v1/jobs", {"spec": {}, "priority": body["priority"]["maximum"]})[0] == 201
    job_range = doc["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"][0]["schema"]
    assert dvlad.call("GET", f"/v1/jobs/{job_range['maximum'] + 1}")[0] == 404
