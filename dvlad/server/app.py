"""The /v1 routes: HTTP in, :class:`~dvlad.server.core.Daemon` calls, one error shape out; and
:func:`make_app`, the app factory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from dvla.api import JOBS_PAGE
from dvla.spec import SpecError
from dvlad.config import Config
from dvlad.fed.routes import FED_PREFIX, FED_ROUTES, verify_peer
from dvlad.gpu.inventory import LIVE_FIELDS
from dvlad.runtime.jobfiles import metrics_rows, read_job_file
from dvlad.runtime.launch import log_path, run_dir
from dvlad.server import lifetime, prom, transfer
from dvlad.server.auth import Identity, authenticate, may_cancel, may_read, peer_credentials, refuse_stranger, sole_user
from dvlad.server.codec import read_body, respond, timed_chunks
from dvlad.server.connections import GUARD, ConnectionGuard
from dvlad.server.core import NeverFits
from dvlad.server.errors import HTTP_CODES, ApiError
from dvlad.server.gpu_jobs import jobs_on_gpus
from dvlad.server.host import HostLoad
from dvlad.server.lifetime import CONFIG, DAEMON, HOST, STATE_DIR
from dvlad.server.limits import IDEMPOTENCY_KEY, JOB_ID_DIGITS, PRIORITY_RANGE, QUERY_RANGES
from dvlad.server.openapi import document
from dvlad.store import TERMINAL, Job, State

log = logging.getLogger("dvlad")

TOKENS = web.AppKey("tokens", dict)
IDENTITY = "dvlad.identity"
FOLLOW_POLL_S = 0.2
LOG_CHUNK = 1 << 20
SUBMIT_FIELDS = {"spec", "idempotency_key", "priority"}
TAR = "application/x-tar"


@web.middleware
async def errors_and_identity(request: web.Request, handler):
    """Authenticate every request; turn every failure into ``{code, field, reason}``.

    A dvlad that serves one user (:func:`~dvlad.server.auth.sole_user`) refuses every other uid on
    its socket first, before it looks at the request's path, headers or body."""
    try:
        sole = sole_user(request.app[CONFIG].personal)
        if (peer := peer_credentials(request)) is not None:
            refuse_stranger(peer[0], sole)
        if request.path.startswith(FED_PREFIX):  # peers' endpoints: signed requests only, never a user's
            await verify_peer(request)
            request.app[GUARD].authenticated(request.transport)
            return await handler(request)
        who = authenticate(request, request.app[TOKENS], request.app[CONFIG].daemon)
        request.app[GUARD].authenticated(request.transport)
        refuse_stranger(who.uid, sole)  # a token's user, on TCP
        request[IDENTITY] = who
        return await handler(request)
    except ApiError as err:
        return respond(request, err.body(), err.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, "error")
        response = respond(request, {"code": code, "field": "", "reason": exc.reason}, exc.status)
        if "Allow" in exc.headers:  # a 405 says which methods the path takes
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (ConnectionError, web.RequestPayloadError) as exc:  # the peer's doing: hung up, or a broken body
        log.debug("request body broke off", extra={"path": request.path, "reason": str(exc)})
        return respond(request, {"code": "bad_body", "field": "", "reason": f"the body broke off: {exc}"}, 400)
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        return respond(request, {"code": "internal", "field": "", "reason": "internal error; see the journal"}, 500)


def _who(request: web.Request) -> Identity:
    return request[IDENTITY]


def _job(request: web.Request, *, reading: bool) -> Job:
    """The job of the URL, if the caller may see it (``reading``) or act on it."""
    raw = request.match_info["job_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > JOB_ID_DIGITS:  # "¹".isdigit(), but int() refuses it
        raise ApiError(404, "not_found", f"no job {raw!r}: job ids are decimal numbers", field="job_id")
    job = request.app[DAEMON].store.get(int(raw))
    if job is None:
        raise ApiError(404, "not_found", f"no job {raw}", field="job_id")
    who = _who(request)
    if (may_read if reading else may_cancel)(who, job):
        return job
    verb = "see" if reading else "cancel"
    raise ApiError(403, "forbidden", f"job {job.id} belongs to {job.user}; {who.user} may not {verb} it",
                   field="job_id")


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "0").lower() in ("1", "true", "yes")


def _int_query(request: web.Request, name: str, default: int) -> int:
    """The integer query parameter ``name`` (its range: :data:`~dvlad.server.limits.QUERY_RANGES`)."""
    lo, hi = QUERY_RANGES[name]
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_query", f"expected an integer, got {raw!r}", field=name) from None
    if not lo <= value <= hi:
        raise ApiError(400, "bad_query", f"must be in [{lo}, {hi}], got {value}", field=name)
    return value


async def submit(request: web.Request) -> web.Response:
    config = request.app[CONFIG].daemon
    body = await read_body(request, config.max_body_bytes, config.max_depth, config.body_timeout_s)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", f"expected an object with {sorted(SUBMIT_FIELDS)}, got {type(body).__name__}")
    for key in body:
        if key not in SUBMIT_FIELDS:
            raise ApiError(400, "unknown_field", f"unknown field (known: {', '.join(sorted(SUBMIT_FIELDS))})",
                           field=key)
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not re.fullmatch(IDEMPOTENCY_KEY, key)):
        raise ApiError(400, "bad_field", "expected 1-128 characters of letters, digits, . _ : -",
                       field="idempotency_key")
    priority = body.get("priority", 0)
    lo, hi = PRIORITY_RANGE
    if not isinstance(priority, int) or isinstance(priority, bool) or not lo <= priority <= hi:
        raise ApiError(400, "bad_field", f"expected an integer in [{lo}, {hi}]", field="priority")
    spec = body.get("spec", {})
    if not isinstance(spec, dict):
        raise ApiError(400, "bad_field", f"expected a table of sections, got {type(spec).__name__}", field="spec")
    try:
        job, created = await request.app[DAEMON].submit(_who(request), spec, key, priority)
    except SpecError as err:
        issues = [{"field": f"spec.{i.key}" if i.key else "spec", "reason": i.reason} for i in err.issues]
        raise ApiError(400, "invalid_spec", str(err), field=issues[0]["field"], issues=issues) from None
    except NeverFits as err:
        raise ApiError(409, "exceeds_node", err.reason, field=err.field) from None
    return respond(request, {"job": request.app[DAEMON].public(job), "created": created}, 201 if created else 200)


async def list_jobs(request: web.Request) -> web.Response:
    """The caller's latest jobs; ``all=1`` everyone's, ``user=NAME`` one user's (others': the same
    permission as ``all``). The daemon filters before ``limit``: a client filtering the latest N of
    everyone's could find none of a user's. Pages of at most ``JOBS_PAGE[1]`` (``JOBS_PAGE[0]`` unless
    asked), further back with ``before=ID``: a reply's cost is its page, however long the history."""
    who = _who(request)
    everyone = _flag(request, "all")
    user = request.query.get("user")
    if user == "":
        raise ApiError(400, "bad_query", "expected a user name", field="user")
    others = everyone or (user is not None and user != who.user)
    if others and not who.sees_all:
        raise ApiError(403, "forbidden", f"{who.user} may list only their own jobs", field="user" if user else "all")
    limit = _int_query(request, "limit", JOBS_PAGE[0])
    before = _int_query(request, "before", 1 << 62)
    own = user is None and not everyone
    daemon = request.app[DAEMON]
    jobs = daemon.store.list(uid=who.uid if own else None, user=user, before=before, limit=limit)
    return respond(request, {"jobs": [daemon.public(j) for j in jobs]})


async def get_job(request: web.Request) -> web.Response:
    job = _job(request, reading=True)
    body = request.app[DAEMON].public(job)
    body["run_dir"] = str(run_dir(request.app[STATE_DIR], job.id))
    body["spec"] = job.spec
    body["events"] = request.app[DAEMON].store.events(job_id=job.id)
    if (federation := request.app[DAEMON].federation) is not None:
        body["parts"] = federation.coordinator.public(job.id)
    return respond(request, body)


async def cancel_job(request: web.Request) -> web.Response:
    job = _job(request, reading=False)
    if job.state in TERMINAL or job.state is State.CANCELLING:
        raise ApiError(409, "conflict", f"job {job.id} is already {job.state}", field="job_id")
    daemon = request.app[DAEMON]
    return respond(request, daemon.public(daemon.cancel(job, _who(request))))


def _gone(request: web.Request) -> bool:
    """The client of a stream hung up: stop polling for it (a months-long daemon must not collect them)."""
    return request.transport is None or request.transport.is_closing()


async def job_logs(request: web.Request) -> web.StreamResponse:
    """``job.log`` from ``offset``: up to its end now, or with ``follow=1`` until the job ends.

    Streamed in chunks of at most ``LOG_CHUNK`` bytes, each read off the event loop: a job's log
    can grow to gigabytes, and neither the daemon's memory nor its other clients should notice."""
    job = _job(request, reading=True)
    path = log_path(request.app[STATE_DIR], job.id)
    offset = _int_query(request, "offset", 0)
    follow = _flag(request, "follow")
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    store = request.app[DAEMON].store
    with contextlib.suppress(ConnectionResetError):  # the client may stop reading at any time
        while True:
            done = not follow or store.get(job.id).state in TERMINAL  # read before draining: nothing is lost
            while chunk := await asyncio.to_thread(read_job_file, path, offset, LOG_CHUNK):
                offset += len(chunk)
                await response.write(chunk)
            if done or _gone(request):
                break
            await asyncio.sleep(FOLLOW_POLL_S)
        await response.write_eof()
    return response


async def job_metrics(request: web.Request) -> web.Response:
    job = _job(request, reading=True)
    last = _int_query(request, "last", 0)
    rows = await asyncio.to_thread(metrics_rows, run_dir(request.app[STATE_DIR], job.id) / "metrics.jsonl",
                                   last=last or None)
    return respond(request, {"job_id": job.id, "rows": rows})


async def events(request: web.Request) -> web.StreamResponse:
    """Transitions with id > ``after``: a list, or with ``follow=1`` newline-delimited JSON as they happen."""
    who = _who(request)
    store = request.app[DAEMON].store
    uid = None if who.sees_all else who.uid
    after = _int_query(request, "after", 0)
    if not _flag(request, "follow"):
        return respond(request, {"events": store.events(after=after, uid=uid)})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        while not _gone(request):
            for event in store.events(after=after, uid=uid):
                after = event["id"]
                await response.write(json.dumps(event).encode() + b"\n")
            await asyncio.sleep(FOLLOW_POLL_S)
    return response


async def nodes(request: web.Request) -> web.Response:
    """This node, and with federation every peer with the age of its last heartbeat."""
    daemon = request.app[DAEMON]
    if daemon.federation is not None:
        return respond(request, {"nodes": daemon.federation.rows()})
    return respond(request, {"nodes": [daemon.node(request.app[HOST].reading())]})


async def topology(request: web.Request) -> web.Response:
    inventory = request.app[DAEMON].inventory
    return respond(request, {"source": inventory.source, **inventory.topology})


def _holder(request: web.Request, job: Job) -> dict[str, Any]:
    """Who holds a GPU: id and user for everyone (as nvidia-smi shows), the name to who may read the job."""
    return {"id": job.id, "user": job.user, **({"name": job.name} if may_read(_who(request), job) else {})}


async def gpus(request: web.Request) -> web.Response:
    """Live per-GPU stats for ``dvla top`` and ``dvla gpus``, with the jobs on each GPU and their pools
    (:mod:`dvlad.server.gpu_jobs`). A node without NVML gives its devices with live fields None."""
    daemon = request.app[DAEMON]
    inventory = daemon.inventory
    on_gpus = jobs_on_gpus(daemon)
    live = {s["index"]: s for s in inventory.sample()}
    blank = dict.fromkeys(LIVE_FIELDS)
    out = []
    for device in inventory.topology.get("devices", []):
        index = device["index"]
        stats = live.get(index, {**blank, "memory_total": device.get("memory_total")})
        out.append({"index": index, "name": device.get("name", ""), "uuid": device.get("uuid", ""),
                    **{k: v for k, v in stats.items() if k != "index"},
                    "job": _holder(request, on_gpus[index][0][0]) if index in on_gpus else None,
                    "jobs": [{**_holder(request, job), **memory} for job, memory in on_gpus.get(index, [])]})
    return respond(request, {"source": inventory.source.split(":")[0],
                             "host": inventory.topology.get("host", ""), "gpus": out})


async def job_checkpoint(request: web.Request) -> web.StreamResponse:
    """The job's latest checkpoint files as one tar, streamed from disk."""
    job = _job(request, reading=True)
    try:
        files = await asyncio.to_thread(transfer.checkpoint_files, run_dir(request.app[STATE_DIR], job.id))
    except transfer.Unlisted as exc:
        raise ApiError(404, "not_found", f"job {job.id}'s checkpoint was not looked for: {exc}",
                       field="job_id") from None
    if not files:
        raise ApiError(404, "not_found", f"job {job.id} has written no checkpoint yet", field="job_id")
    response = web.StreamResponse(headers={
        "Content-Type": TAR, "Content-Disposition": f'attachment; filename="job-{job.id}-checkpoint.tar"'})
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        async for chunk in transfer.tar_stream(files):
            await response.write(chunk)
        await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    """A tar of files (a checkpoint) into ``STATE_DIR/uploads/UID/SHA256/``, for a spec to reference."""
    cap = request.app[CONFIG].daemon.max_upload_bytes
    if not cap:
        raise ApiError(403, "forbidden", "uploads are off on this daemon (daemon.max_upload_bytes = 0)")
    if request.content_type != TAR:
        raise ApiError(415, "unsupported_media_type", f"content type {request.content_type!r}; send {TAR}",
                       field="Content-Type")
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(413, "too_large", f"upload of {request.content_length} bytes; the limit is {cap}")
    who = _who(request)
    try:
        chunks = timed_chunks(request.content.iter_chunked(transfer.CHUNK), request.app[CONFIG].daemon.body_timeout_s)
        stored = await transfer.receive(chunks,
                                        request.app[STATE_DIR] / "uploads", who.uid, who.gid, cap)
    except transfer.TooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, "bad_upload", str(exc)) from None
    log.info("upload", extra={"user": who.user, "path": stored["path"], "bytes": stored["bytes"]})
    return respond(request, stored, 201)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(request.app[CONFIG].daemon))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=prom.render(request.app[prom.REGISTRY]),
                        headers={"Content-Type": prom.CONTENT_TYPE})


ROUTES = [
    web.post("/v1/jobs", submit),
    web.get("/v1/jobs", list_jobs, allow_head=False),
    web.get("/v1/jobs/{job_id}", get_job, allow_head=False),
    web.post("/v1/jobs/{job_id}/cancel", cancel_job),
    web.get("/v1/jobs/{job_id}/logs", job_logs, allow_head=False),
    web.get("/v1/jobs/{job_id}/metrics", job_metrics, allow_head=False),
    web.get("/v1/jobs/{job_id}/checkpoint", job_checkpoint, allow_head=False),
    web.post("/v1/uploads", upload),
    web.get("/v1/events", events, allow_head=False),
    web.get("/v1/nodes", nodes, allow_head=False),
    web.get("/v1/topology", topology, allow_head=False),
    web.get("/v1/gpus", gpus, allow_head=False),
    web.get("/v1/openapi.json", openapi, allow_head=False),
    web.get("/metrics", metrics, allow_head=False),
]


def make_app(config: Config, tokens: dict[str, str]) -> web.Application:
    """The daemon's app: the routes, and what they use (the store, the daemon) opened by its cleanup
    contexts when a runner sets it up (:mod:`dvlad.server.lifetime`)."""
    # aiohttp's own body cap sits above ours, so an oversized body gets our 413 object, not its text page
    app = web.Application(middlewares=[errors_and_identity], client_max_size=config.daemon.max_body_bytes * 2)
    app[CONFIG], app[STATE_DIR], app[TOKENS] = config, Path(config.daemon.state_dir), tokens
    app[HOST] = HostLoad()
    d = config.daemon
    app[GUARD] = ConnectionGuard.for_file_limit(d.max_tcp_connections, d.max_tcp_unauthenticated)
    app.cleanup_ctx.extend(lifetime.CONTEXTS)
    app.add_routes(ROUTES)
    app.add_routes(FED_ROUTES)
    return app
