"""``/v1/openapi.json``: the API as OpenAPI 3.1. A test checks it against the app's routes and replies.

Response schemas list their ``required`` keys: that is the contract clients rely on. Requests state the
limits the daemon enforces (:mod:`dvlad.server.limits`, and the config's body sizes and depth as
``x-max-body-bytes`` and ``x-max-depth``), so schema-driven clients and fuzzers know them. The peers'
routes (``/v1/fed/*``) are here too, under their own security scheme (``peerSignature``): no user
credential opens them, and a schema-driven client sees that.
"""

from __future__ import annotations

from typing import Any

from dvla.api import JOBS_PAGE
from dvlad.config import DaemonSection
from dvlad.fed import signing
from dvlad.fed.parts import ENV_KEYS
from dvlad.server.limits import IDEMPOTENCY_KEY, INT_MAX, INT_MIN, JOB_ID_DIGITS, PRIORITY_RANGE, QUERY_RANGES

JOB_KEYS = ["id", "user", "uid", "name", "priority", "gpus", "cpus", "state", "reason", "submitted_at",
            "started_at", "ended_at", "gpu_ids", "pid", "exit_code", "pending_reason"]
ERROR = {"type": "object", "required": ["code", "field", "reason"],
         "properties": {"code": {"type": "string"}, "field": {"type": "string"}, "reason": {"type": "string"}}}
JOB = {"type": "object", "required": JOB_KEYS}
EVENT = {"type": "object", "required": ["id", "job_id", "ts", "from_state", "to_state", "reason"]}
JOB_ID = {"name": "job_id", "in": "path", "required": True,
          "schema": {"type": "integer", "minimum": 0, "maximum": 10**JOB_ID_DIGITS - 1}}


def _query(name: str, kind: str, doc: str, **schema: Any) -> dict[str, Any]:
    """A query parameter; an integer one gets its enforced range (``QUERY_RANGES``)."""
    if kind == "integer":
        schema["minimum"], schema["maximum"] = QUERY_RANGES[name]
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind, **schema}, "description": doc}


def _ok(schema: dict[str, Any], media: str = "application/json", status: str = "200") -> dict[str, Any]:
    errors = {code: {"description": "error", "content": {"application/json": {"schema": ERROR}}}
              for code in ("400", "401", "403", "404")}
    return {status: {"description": "ok", "content": {media: {"schema": schema}}}, **errors}


def _obj(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


NODE_ROW_KEYS = ["name", "gpu_source", "gpus", "cpu_slots", "free_cpu_slots", "running_jobs", "cpu_percent",
                 "cpu_count", "ram_used", "ram_total"]
FED_NODE_ROW = {
    "addr": {"type": "string", "description": "host:port peers reach it at"},
    "state": {"type": "string", "enum": ["up", "down"]},
    "last_heartbeat_age_s": {"type": ["number", "null"], "description": "0 for this node; null: never heard"},
    "free_gpus": {"type": "array", "items": {"type": "integer"}},
    "topology": {"type": "object"}, "pools": {"type": "array"},
    "leases": {"type": "array", "items": {"type": "object"}, "description": "its room held for coordinators"},
    "last_error": {"type": "string", "description": "why this node's last heartbeat to the peer failed"}}
"""What a row of ``GET /v1/nodes`` adds with federation on (:meth:`dvlad.fed.service.Federation.rows`)."""

COUNT = {"type": "integer", "minimum": 0, "maximum": (1 << 31) - 1}
LEASE = _obj(id={"type": "string"}, coordinator={"type": "string"}, job_id={"type": "integer"},
             gpu_ids={"type": "array", "items": {"type": "integer"}}, cpus={"type": "integer"},
             ttl_s={"type": "number"}, expires_in_s={"type": "number"}, part_id={"type": ["integer", "null"]})
PART = _obj(part_id={"type": "integer"}, state={"type": "string"}, reason={"type": "string"},
            active={"type": "boolean"})
PEER_SIGNED = [{"peerSignature": []}]
SIGNATURE_HEADERS = ", ".join(signing.HEADERS[:-1])
PEER_SIGNATURE = {
    "type": "apiKey", "in": "header", "name": signing.SIGNATURE,
    "description": f"/v1/fed/* only, between daemons of one cluster: HMAC-SHA256 with the cluster secret over the "
                   f"method, the path with its query, the SHA-256 of the body and the headers {SIGNATURE_HEADERS} "
                   "(a timestamp within federation.replay_window_s, a nonce used once, the sender's node name), "
                   "which go with it. A user's bearer token or Unix-socket credentials never open these routes "
                   "(401), and a signature never opens a user route. 404 where federation is off. docs/federation.md"}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _fed(summary: str, reply: dict[str, Any], status: str = "200", body: dict[str, Any] | None = None,
         parameters: list[dict[str, Any]] | None = None, errors: dict[str, str] | None = None) -> dict[str, Any]:
    """A peer route: signed requests only (``peerSignature``), JSON in and out; ``errors``: its error
    statuses beyond 400, 401, 403 and 404, with what they mean."""
    return {"summary": summary, "security": PEER_SIGNED, **({"requestBody": _json_body(body)} if body else {}),
            **({"parameters": parameters} if parameters else {}),
            "responses": {**_ok(reply, status=status), **{code: {"description": why, "content": {
                "application/json": {"schema": ERROR}}} for code, why in (errors or {}).items()}}}


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


LEASE_ID = _path_param("lease_id", {"type": "string", "minLength": 1})
PART_ID = _path_param("part_id", {"type": "integer", "minimum": 0, "maximum": 10**18 - 1})


def _fed_paths() -> dict[str, Any]:
    """The peer routes of :mod:`dvlad.fed.routes`, their bodies as the handlers check them."""
    report = {"type": "object", "required": ["addr"], "description": "the sender's own GET /v1/nodes row (403 "
              "for an addr not in this node's federation.peers)", "properties": {"name": {"type": "string"},
                                                                               **FED_NODE_ROW}}
    lease = {"type": "object", "required": ["job_id", "gpus", "cpus"],
             "properties": {"job_id": {**COUNT, "description": "the coordinator's job"}, "gpus": COUNT, "cpus": COUNT}}
    part = {"type": "object", "required": ["lease_id", "user", "env"], "properties": {
        "lease_id": {"type": "string", "description": "a lease this coordinator holds here (else 404)"},
        "user": {"type": "string", "minLength": 1, "description": "looked up by name on this node (403 no_such_user)"},
        "spec": {"type": "object", "description": "the job's spec; its resources must be what the lease holds"},
        "env": {"type": "object", "required": list(ENV_KEYS), "additionalProperties": False,
                "properties": {k: {"type": "string"} for k in ENV_KEYS}}}}
    return {
        "/v1/fed/heartbeat": {"post": _fed("A peer is alive: its free room, CPU, RAM and topology", _obj(
            name={"type": "string"}), body=report)},
        "/v1/fed/leases": {"post": _fed("Hold free GPUs (best linked) and CPU slots for a coordinator's job, "
                                        "for lease_ttl_s unless renewed", LEASE, "201", body=lease,
                                        errors={"409": "no_room: not that much free here"})},
        "/v1/fed/leases/{lease_id}/renew": {"post": _fed(
            "Renew a lease; the reply carries its part's state (null before the part starts)",
            _obj(lease=LEASE, part={"anyOf": [PART, {"type": "null"}]}), parameters=[LEASE_ID])},
        "/v1/fed/leases/{lease_id}": {"delete": _fed("Release a lease, stopping its part if it still runs",
                                                     _obj(released={"type": "string"}), parameters=[LEASE_ID])},
        "/v1/fed/parts": {"post": _fed("Start a node part under a lease, as the job's user", PART, "201", body=part)},
        "/v1/fed/parts/{part_id}": {"get": _fed("A node part's state", PART, parameters=[PART_ID])},
        "/v1/fed/parts/{part_id}/stop": {"post": _fed("Stop a node part (cancelled)", PART, parameters=[PART_ID])},
    }


def _submit(daemon: DaemonSection) -> dict[str, Any]:
    lo, hi = PRIORITY_RANGE
    spec = {"type": "object", "x-max-depth": daemon.max_depth, "x-integer-range": [INT_MIN, INT_MAX],
            "description": f"the job spec's sections (docs/spec.md); the whole body nests at most "
                           f"{daemon.max_depth} levels; integers in [{INT_MIN}, {INT_MAX}] and finite numbers "
                           "only (no NaN or Infinity), else 400 out_of_range"}
    body = {"type": "object", "additionalProperties": False, "properties": {
        "spec": spec, "idempotency_key": {"type": "string", "pattern": IDEMPOTENCY_KEY, "maxLength": 128},
        "priority": {"type": "integer", "minimum": lo, "maximum": hi}}}
    return {
        "summary": "Submit a job (durable before the reply; idempotent per user and key)",
        "requestBody": {"required": True, "x-max-body-bytes": daemon.max_body_bytes,
                        "content": {m: {"schema": body} for m in ("application/json", "application/msgpack")}},
        "responses": {**_ok(_obj(job=JOB, created={"type": "boolean"}), status="201"),
                      "200": {"description": "the job this idempotency key already made",
                              "content": {"application/json": {"schema": _obj(job=JOB, created={"type": "boolean"})}}},
                      "408": {"description": f"the body stalled for {daemon.body_timeout_s:g} s"},
                      "409": {"description": "the job asks for more GPUs or CPU slots than the whole node has "
                                             "(code exceeds_node)",
                              "content": {"application/json": {"schema": ERROR}}},
                      "413": {"description": f"body over {daemon.max_body_bytes} bytes"},
                      "415": {"description": "neither JSON nor msgpack"}}}


def _upload(daemon: DaemonSection) -> dict[str, Any]:
    return {
        "summary": "Upload a tar of files (a checkpoint) to STATE_DIR/uploads/UID/SHA256/, owned by the caller; "
                   "regular files and directories only, relative names",
        "requestBody": {"required": True, "x-max-body-bytes": daemon.max_upload_bytes,
                        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {**_ok(_obj(path={"type": "string"}, sha256={"type": "string"}, bytes={"type": "integer"},
                                 files={"type": "array", "items": {"type": "string"}}), status="201"),
                      "408": {"description": f"the body stalled for {daemon.body_timeout_s:g} s"},
                      "413": {"description": f"over {daemon.max_upload_bytes} bytes (daemon.max_upload_bytes)"},
                      "415": {"description": "not application/x-tar"}}}


def document(daemon: DaemonSection) -> dict[str, Any]:
    """The document for a daemon of this config: its body limits are stated as it enforces them."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "dvlad", "version": "1",
                 "description": "D-VLA daemon. Unix socket: identity from peer credentials; TCP: Bearer token. "
                                "Bodies JSON or msgpack (Content-Type / Accept). A wrong method gets 405 with "
                                "an Allow header."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "TCP only; the Unix socket needs none"},
                                           "peerSignature": PEER_SIGNATURE}},
        "security": [{}, {"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": _submit(daemon),
                "get": {"summary": "List jobs (own; all=1 or another user= for admins or when the config allows)",
                        "parameters": [_query("all", "boolean", "every user's jobs"),
                                       _query("user", "string", "only this user's jobs (filtered before limit)",
                                              minLength=1),
                                       _query("limit", "integer",
                                              f"most recent N (default {JOBS_PAGE[0]}, at most {JOBS_PAGE[1]})"),
                                       _query("before", "integer", "only jobs with smaller ids: the next page back")],
                        "responses": _ok(_obj(jobs={"type": "array", "items": JOB}))},
            },
            "/v1/jobs/{job_id}": {"get": {
                "summary": "One job with its run directory on the daemon's machine, its spec and its events",
                "parameters": [JOB_ID],
                "responses": _ok({"type": "object", "required": [*JOB_KEYS, "run_dir", "spec", "events"]})}},
            "/v1/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel: queued at once; running: SIGTERM, SIGKILL after the grace period",
                "parameters": [JOB_ID], "responses": {**_ok(JOB), "409": {"description": "already ended"}}}},
            "/v1/jobs/{job_id}/logs": {"get": {
                "summary": "The job's log (stdout and stderr); follow=1 streams until it ends",
                "parameters": [JOB_ID, _query("follow", "boolean", "stream"), _query("offset", "integer", "from byte")],
                "responses": _ok({"type": "string"}, "text/plain")}},
            "/v1/jobs/{job_id}/metrics": {"get": {
                "summary": "The job's metrics.jsonl rows", "parameters": [JOB_ID, _query("last", "integer", "last N")],
                "responses": _ok(_obj(job_id={"type": "integer"}, rows={"type": "array"}))}},
            "/v1/jobs/{job_id}/checkpoint": {"get": {
                "summary": "The job's latest checkpoint (*.safetensors of its run directory) as a tar stream",
                "parameters": [JOB_ID], "responses": _ok({"type": "string", "format": "binary"}, "application/x-tar")}},
            "/v1/uploads": {"post": _upload(daemon)},
            "/v1/events": {"get": {
                "summary": "State transitions; follow=1 streams newline-delimited JSON",
                "parameters": [_query("after", "integer", "event id"), _query("follow", "boolean", "stream")],
                "responses": _ok(_obj(events={"type": "array", "items": EVENT}))}},
            "/v1/nodes": {"get": {
                "summary": "This node's GPUs and CPU slots, and its CPU (percent of all cores, sampled at most every "
                           "0.5 s; null before the first sample) and RAM (bytes; used = total - available)",
                "description": "With federation, every node (this one first, then each peer as its last heartbeat "
                               "said) with the federation keys too",
                "responses": _ok(_obj(nodes={"type": "array", "items": {
                    "type": "object", "required": NODE_ROW_KEYS, "properties": FED_NODE_ROW}}))}},
            "/v1/topology": {"get": {"summary": "GPU topology (NVML, or a replayed recording)",
                                     "responses": _ok({"type": "object", "required": ["source", "devices", "pairs"]})}},
            "/v1/gpus": {"get": {
                "summary": "Live per-GPU stats (NVML, sampled at most every 0.5 s) and the jobs on each GPU: "
                           "`jobs` (oldest first; several where jobs share it) with each job's `weight_pool` and "
                           "`activation_pool` (`used` and `peak` from its newest metric row, its `budget` and "
                           "dvlad's `estimate`, in bytes, null where unknown) and `activation_growing`; `job` is "
                           "the first of them (for older clients); live fields are null where the node has no "
                           "NVML (source fixture or none), and null with `error` (NVML's error) for a GPU NVML "
                           "cannot reach",
                "responses": _ok(_obj(source={"type": "string"}, host={"type": "string"}, gpus={
                    "type": "array", "items": {"type": "object", "required": [
                        "index", "name", "uuid", "utilization", "memory_used", "memory_total", "temperature",
                        "power_draw", "power_limit", "job", "jobs"]}}))}},
            "/v1/openapi.json": {"get": {"summary": "This document",
                                         "responses": _ok({"type": "object", "required": ["openapi", "paths"]})}},
            "/metrics": {"get": {"summary": "Prometheus text exposition",
                                 "responses": _ok({"type": "string"}, "text/plain")}},
            **_fed_paths(),
        },
    }
