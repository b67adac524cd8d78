"""A real dvlad against hostile or broken peers: silent and stalled TCP connections, bodies that stop
mid-way, numbers no client can decode back, malformed requests by the hundred.

One daemon for the module, as a small lab server runs it: TCP with a token, a file limit of 256,
short time-outs so the tests need not wait for the defaults. Nothing runs (``running_jobs = 0``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

from dvlad.testing import UnixConnection, request

pytestmark = pytest.mark.slow  # every test talks to a real dvlad

TOKEN = "hostile-test-token"
CONFIG = ("header_timeout_s = 2.0\nbody_timeout_s = 1.0\n"
          "[node]\ncpu_slots = 8\n[limits.default]\nrunning_jobs = 0\n")
OPEN_FILES = 256
STALLED_HEAD = b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\n"
STALLED_BODY = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"spec\"")


@pytest.fixture(scope="module")
def dvlad(module_dvlads):
    daemon = module_dvlads(CONFIG, start=False)
    daemon.port = daemon.serve_tcp(f"{TOKEN} root\n")
    return daemon.start(open_files=OPEN_FILES)


def _tcp(dvlad, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", dvlad.port), timeout=timeout)


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the daemon closes ``sock`` within ``within`` seconds (whatever it sent before)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        pass
    return True


def _http(dvlad, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh TCP connection; everything the daemon answers until it closes."""
    with _tcp(dvlad, timeout=5) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def test_silent_and_stalled_tcp_peers_are_dropped_and_never_lock_out_local_users(dvlad):
    """400 TCP connections against a file limit of 256: a third silent, a third stopped mid-head, a
    third stopped mid-body. The Unix socket keeps answering at once, and every one of them is closed
    within the time-outs (2 s for a head, 1 s for a body)."""
    peers = []
    try:
        for i in range(400):
            sock = _tcp(dvlad)
            peers.append(sock)
            with contextlib.suppress(OSError):  # dropped by the cap at once: fine, it holds nothing
                sock.sendall(b"" if i % 3 == 0 else STALLED_HEAD if i % 3 == 1 else STALLED_BODY)
        started = time.monotonic()
        status, body = request(dvlad.socket, "GET", "/v1/nodes", timeout=5)
        assert status == 200, body
        assert time.monotonic() - started < 2.0
        open_after = [s for s in peers if not _closed_by_peer(s, max(0.1, started + 6.0 - time.monotonic()))]
        kinds = sorted({peers.index(s) % 3 for s in open_after})
        assert not open_after, f"{len(open_after)} of {len(peers)} connections still open after 6 s (kinds {kinds})"
    finally:
        for sock in peers:
            sock.close()
    # and the daemon serves TCP again as before
    reply = _http(dvlad, b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                  b"\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_a_body_that_stalls_gets_408(dvlad):
    with _tcp(dvlad) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"sp")
        sock.settimeout(5)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"request_timeout" in reply and b"body_timeout_s" in reply



def test_an_upload_that_stalls_gets_408_and_leaves_nothing_behind(dvlad):
    """Uploads stream for as long as they make progress; one that stops is dropped, its spool removed.
    The uploads directory can be passed through (to each user's own), not listed."""
    with _tcp(dvlad) as sock:
        sock.sendall(b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                     b"\r\nContent-Type: application/x-tar\r\nContent-Length: 100000\r\n\r\n" + bytes(5000))
        sock.settimeout(5)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    uploads = dvlad.state_dir / "uploads"
    assert not list((uploads / ".staging").iterdir())
    assert {p.name: p.stat().st_mode & 0o777 for p in (dvlad.state_dir, uploads)} == {"state": 0o711, "uploads": 0o711}

def _strict_json(text: str):
    """JSON as strict parsers (browsers, Go, jq --strict) read it: a bare NaN or Infinity is an error."""
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_metrics_are_served_as_null(dvlad):
    """A diverged job writes ``NaN`` into metrics.jsonl (Python's json does): the API serves null."""
    status, body = dvlad.call("POST", "/v1/jobs", {"spec": {"job": {"name": "diverged"}}})
    assert status == 201, body
    job_id = body["job"]["id"]
    run = dvlad.state_dir / "jobs" / str(job_id) / "run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": NaN, "grad_norm": Infinity}\n')
    conn = UnixConnection(dvlad.socket)
    conn.request("GET", f"/v1/jobs/{job_id}/metrics")
    rows = _strict_json(conn.getresponse().read().decode())["rows"]
    conn.close()
    assert rows == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None, "grad_norm": None}]


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET /v1/nodes HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
    b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
]


def test_malformed_requests_get_400_and_a_few_quiet_log_lines(dvlad):
    """An unauthenticated fuzzer must not flood the journal: malformed requests are logged without a
    traceback, below error level, at most one line per 10 s (with the number left out)."""
    before = dvlad.stderr.stat().st_size
    for i in range(120):
        reply = _http(dvlad, MALFORMED[i % len(MALFORMED)])
        assert reply[:5] == b"HTTP/" and reply[8:12] == b" 400", (MALFORMED[i % len(MALFORMED)][:60], reply[:300])
    time.sleep(0.5)
    with dvlad.stderr.open("rb") as err:
        err.seek(before)
        lines = [json.loads(line) for line in err.read().splitlines()]
    loud = [line for line in lines if line["level"] in ("error", "critical") or "exc" in line]
    assert not loud, loud[:3]
    assert len(lines) <= 3, lines


def test_a_peer_that_hangs_up_mid_body_is_not_the_daemons_error(dvlad):
    """The route is reading a body when the peer goes away: nothing for the journal at error level."""
    before = dvlad.stderr.stat().st_size
    for _ in range(20):
        with _tcp(dvlad, timeout=5) as sock:
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                         b"Content-Type: application/json\r\nAuthorization: Bearer " + TOKEN.encode() +
                         b"\r\n\r\n{\"spec\"")
            time.sleep(0.05)  # the route is waiting for the rest
    time.sleep(0.5)
    with dvlad.stderr.open("rb") as err:
        err.seek(before)
        lines = [json.loads(line) for line in err.read().splitlines()]
    assert not [line for line in lines if line["level"] in ("error", "critical") or "exc" in line], [
        line.get("exc", "")[-400:] for line in lines[:2]]
    assert request(dvlad.socket, "GET", "/v1/nodes")[0] == 200
