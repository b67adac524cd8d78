"""Fuzz a running dvlad's HTTP API from its own OpenAPI document with schemathesis.

Why from the document: every operation, parameter and body it declares (with the limits it states,
:mod:`dvlad.server.limits`) is generated both valid (positive) and invalid (negative), so the
daemon's answers to input nobody wrote a test for are checked too. What counts: a 5xx, or a request
the daemon did not answer at all, is a failure; every 4xx is the daemon doing its job.

Used by ``tests/test_api_fuzz.py`` (a few hundred cases) and ``scripts/fuzz_api.py`` (10,000 and
more, by hand). schemathesis is a test dependency: this module is imported by those two only.
"""

from __future__ import annotations

import contextlib
import math
import os
import pwd
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from dvlad.fed import signing
from dvlad.testing import Dvlad

STREAMING = "follow"
"""The query flag that turns logs and events into streams that last as long as a job (or for ever):
dropped from generated cases, so each case is one request and one reply (the streams have their own tests)."""


schemathesis.serializer.alias("application/x-tar", "application/octet-stream")  # uploads: bytes as they come


@schemathesis.serializer("application/msgpack")
def _msgpack(_context, value) -> bytes:
    """Submit bodies in dvlad's binary form too (schemathesis knows JSON, not msgpack). msgpack has no
    integers beyond [-2^63, 2^64-1]: larger generated ones are sent as those bounds."""
    return msgpack.packb(_clamped(value), use_bin_type=True)


def _clamped(value):
    if isinstance(value, dict):
        return {k: _clamped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clamped(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, -(1 << 63)), (1 << 64) - 1)
    return value

CONFIG = "[node]\ncpu_slots = 8\n[limits.default]\nrunning_jobs = 0\n"
"""The fuzzed daemon's config: jobs are accepted and queued, never run (the API is fuzzed, not training)."""
TOKEN = "api-fuzz-token"


CLUSTER_SECRET = "api-fuzz-cluster-secret-of-32-characters-or-more"
PEER_ROUTES = "/v1/fed/"


def serve(daemon: Dvlad) -> str:
    """Start ``daemon`` (made with :data:`CONFIG`, not yet started) on TCP too, with :data:`TOKEN` for the
    user running this, and federated (a cluster of one, :data:`CLUSTER_SECRET`): the peer routes are
    live and get every generated body, signed (:func:`_signed`), not a 404 before any. Returns its base URL."""
    port = daemon.serve_tcp(f"{TOKEN} {pwd.getpwuid(os.geteuid()).pw_name}\n")
    daemon.federate("fuzzed", [], CLUSTER_SECRET)
    daemon.start()
    return f"http://127.0.0.1:{port}"


@dataclass
class Tally:
    """What a fuzzing run saw."""

    cases: int = 0
    read_backs: int = 0
    """GETs of each accepted job, as JSON and as msgpack (their statuses are counted with the cases')."""
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    """A line per 5xx or unanswered request: the operation, the status or error, and a curl command."""
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def fuzz(base_url: str, token: str, cases: int, *, timeout_s: float = 10.0) -> Tally:
    """About ``cases`` generated requests against the dvlad at ``base_url`` (TCP, with a bearer
    ``token``), spread evenly over the operations that take parameters or a body and over both modes
    (positive, negative); an operation without any has few distinct cases, and hypothesis stops there."""
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json", headers=headers, timeout=timeout_s)
    operations = [result.ok() for result in schema.get_all_operations()]
    varied = max(1, sum(1 for op in operations if len(op.path_parameters) or len(op.query) or len(op.body)))
    tally = Tally()
    session = requests.Session()
    started = time.monotonic()
    while tally.cases < cases:  # again while short: hypothesis ends a run early once it finds few new cases
        examples = max(1, math.ceil((cases - tally.cases) / (2 * varied)))
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _run(operation, mode, examples, lambda case: _call(case, base_url, session, headers, timeout_s, tally))
    tally.seconds = time.monotonic() - started
    return tally


def _run(operation, mode: GenerationMode, examples: int, call) -> None:
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False, verbosity=Verbosity.quiet)
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case) -> None:
        call(case)

    with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no parameters or body): no cases
        one()


def _call(case, base_url: str, session: requests.Session, headers: dict[str, str], timeout_s: float,
          tally: Tally) -> None:
    if case.query:
        case.query.pop(STREAMING, None)
    tally.cases += 1
    label = f"{case.method} {case.path}"
    try:
        if case.path.startswith(PEER_ROUTES):
            response = _signed(case, base_url, session, timeout_s)
        else:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        tally.statuses[599] += 1  # no answer: counted as the daemon's failure
        tally.failures.append(f"{label}: no answer ({type(exc).__name__}: {exc}) {_curl(case, headers)}")
        return
    _count(tally, label, response.status_code, response.text, _curl(case, headers))
    if case.method == "POST" and case.path == "/v1/jobs" and response.status_code in (200, 201):
        _read_back(response.json()["job"]["id"], base_url, session, headers, timeout_s, tally)


def _signed(case, base_url: str, session: requests.Session, timeout_s: float) -> requests.Response:
    """A peer route's case signed with the cluster secret over the bytes that go (its generated
    signature headers replaced), so the fuzzed bodies and queries get past the signature to the
    handlers that parse them. Unsigned, every such case is a 401; the user-route cases keep showing
    that a bearer token never opens a peer route."""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    kwargs.pop("timeout", None)
    prepared = session.prepare_request(requests.Request(**kwargs))
    body = prepared.body or b""
    prepared.headers.update(signing.sign(CLUSTER_SECRET.encode(), prepared.method or "GET", prepared.path_url,
                                         body.encode() if isinstance(body, str) else body, "fuzzer"))
    return session.send(prepared, timeout=timeout_s)


def _count(tally: Tally, label: str, status: int, text: str, how: str) -> None:
    tally.statuses[status] += 1
    if status >= 500:
        tally.failures.append(f"{label}: {status} {text[:200]!r} {how}")


def _read_back(job_id: int, base_url: str, session: requests.Session, headers: dict[str, str], timeout_s: float,
               tally: Tally) -> None:
    """What the daemon accepted it must be able to serve back, in both of its codecs: a job submitted
    with numbers msgpack or strict JSON cannot carry used to be a 500 on every later read."""
    for accept in ("application/json", "application/msgpack"):
        url = f"{base_url}/v1/jobs/{job_id}"
        tally.read_backs += 1
        try:
            reply = session.get(url, headers={**headers, "Accept": accept}, timeout=timeout_s)
        except requests.RequestException as exc:
            tally.statuses[599] += 1
            tally.failures.append(f"GET {url} ({accept}): no answer ({type(exc).__name__}: {exc})")
            continue
        _count(tally, f"GET /v1/jobs/{job_id} read back as {accept}", reply.status_code, reply.text, "")


def _curl(case, headers: dict[str, str]) -> str:
    try:
        return case.as_curl_command(headers=headers)
    except Exception as exc:  # a case curl cannot spell (binary bodies): say so, keep the failure
        return f"(no curl command: {exc})"
