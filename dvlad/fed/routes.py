"""The ``/v1/fed`` routes: what peers ask of each other. Signed requests only (:mod:`.signing`); a
user's token or socket credentials never reach them, and a peer's signature never opens a user route.

Why refusals are logged at warning, at most once per ``REFUSAL_LOG_EVERY_S`` per address: a refused
signature is either a misconfigured peer (another secret: the admin must see it) or an attack (which
must not flood the journal); the count of refusals left out goes with the next line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from dvla.spec import SpecError
from dvlad.fed.signing import Refused
from dvlad.server.codec import respond
from dvlad.server.errors import ApiError
from dvlad.server.lifetime import DAEMON

log = logging.getLogger("dvlad")
FED_PREFIX = "/v1/fed/"
PEER = "dvlad.peer"
REFUSAL_LOG_EVERY_S = 10.0
MAX_HOSTS = 10_000
_refusals: dict[str, tuple[float, int]] = {}
"""Peer host -> (when its next refusal may be logged, refusals left out since the last line)."""


def _log_refusal(addr: str, path: str, reason: str) -> None:
    """Log at most one refusal per host every ``REFUSAL_LOG_EVERY_S`` (each connection has its own port)."""
    now = time.monotonic()
    host = addr.rpartition(":")[0] or addr
    next_at, left_out = _refusals.get(host, (0.0, 0))
    if now < next_at:
        _refusals[host] = (next_at, left_out + 1)
        return
    if len(_refusals) > MAX_HOSTS:  # bounded memory whatever the addresses
        _refusals.clear()
    _refusals[host] = (now + REFUSAL_LOG_EVERY_S, 0)
    log.warning("peer request refused", extra={"peer": addr, "path": path, "reason": reason, "left_out": left_out})


def _federation(request: web.Request) -> Any:
    federation = request.app[DAEMON].federation
    if federation is None:
        raise ApiError(404, "not_found", "federation is off on this dvlad (no [federation] secret_file)")
    return federation


async def verify_peer(request: web.Request) -> None:
    """Check the request's signature (401, logged, if it fails); sets the sender's node name."""
    federation = _federation(request)
    body = await request.read()
    try:
        request[PEER] = federation.verifier.verify(request.method, request.path_qs, body, request.headers)
    except Refused as exc:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix socket"
        _log_refusal(addr, request.path, str(exc))
        raise ApiError(401, "unauthorized", f"peer request refused: {exc}") from None


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "bad_body", "expected a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", "expected a JSON object")
    return body


def _count(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 31:
        raise ApiError(400, "bad_field", "expected an integer ≥ 0", field=key)
    return value


def _part_id(request: web.Request) -> int:
    raw = request.match_info["part_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, "not_found", f"no part {raw!r}", field="part_id")
    return int(raw)


async def heartbeat(request: web.Request) -> web.Response:
    federation = _federation(request)
    report = await _json(request)
    if federation.peers.heard(report) is None:
        raise ApiError(403, "forbidden", f"{report.get('addr')!r} is not in this node's federation.peers",
                       field="addr")
    return respond(request, {"name": federation.name})


async def grant_lease(request: web.Request) -> web.Response:
    federation = _federation(request)
    body = await _json(request)
    lease = federation.parts.grant(request[PEER], _count(body, "job_id"), _count(body, "gpus"), _count(body, "cpus"))
    request.app[DAEMON].kick()
    return respond(request, lease.public(), 201)


async def renew_lease(request: web.Request) -> web.Response:
    federation = _federation(request)
    lease = federation.parts.lease(request.match_info["lease_id"], request[PEER])
    request.app[DAEMON].leases.renew(lease.id)
    part = None
    if lease.part_id is not None and (job := request.app[DAEMON].store.get(lease.part_id)) is not None:
        part = federation.parts.state(job)
    return respond(request, {"lease": lease.public(), "part": part})


async def release_lease(request: web.Request) -> web.Response:
    federation = _federation(request)
    lease = federation.parts.lease(request.match_info["lease_id"], request[PEER])
    request.app[DAEMON].leases.release(lease.id)
    federation.parts.release(lease, f"coordinator {request[PEER]} (its job {lease.job_id} ended)")
    return respond(request, {"released": lease.id})


async def start_part(request: web.Request) -> web.Response:
    federation = _federation(request)
    body = await _json(request)
    try:
        job = federation.parts.start(request[PEER], body)
    except SpecError as err:
        raise ApiError(400, "bad_spec", f"the part's spec is invalid here: {err}", field="spec") from None
    return respond(request, federation.parts.state(job), 201)


async def get_part(request: web.Request) -> web.Response:
    federation = _federation(request)
    return respond(request, federation.parts.state(federation.parts.part(_part_id(request), request[PEER])))


async def stop_part(request: web.Request) -> web.Response:
    federation = _federation(request)
    job = federation.parts.part(_part_id(request), request[PEER])
    federation.parts.stop(job, f"coordinator {request[PEER]}")
    return respond(request, federation.parts.state(request.app[DAEMON].store.get(job.id)))


FED_ROUTES = [
    web.post("/v1/fed/heartbeat", heartbeat),
    web.post("/v1/fed/leases", grant_lease),
    web.post("/v1/fed/leases/{lease_id}/renew", renew_lease),
    web.delete("/v1/fed/leases/{lease_id}", release_lease),
    web.post("/v1/fed/parts", start_part),
    web.get("/v1/fed/parts/{part_id}", get_part, allow_head=False),
    web.post("/v1/fed/parts/{part_id}/stop", stop_part),
]
"""Served beside the user routes (``dvlad.server.app.ROUTES``), never through the same authentication."""
