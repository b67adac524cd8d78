"""``/v1/openapi.json``: the API as OpenAPI 3.1. A test checks it against the app's routes and replies.

Response schemas list their ``required`` keys: that is the contract clients rely on. Requests state the
limits the daemon enforces (:mod:`dvlad.server.limits`, and the config's body sizes and depth as
``x-max-body-bytes`` and ``x-max-depth``), so schema-driven clients and fuzzers know them.
"""

from __future__ import annotations

from typing import Any

from dvla.api import JOBS_PAGE
from dvlad.config import DaemonSection
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
                                                      "description": "TCP only; the Unix socket needs none"}}},
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
                "responses": _ok(_obj(nodes={"type": "array", "items": {"type": "object", "required": [
                    "name", "gpu_source", "gpus", "cpu_slots", "free_cpu_slots", "running_jobs", "cpu_percent",
                    "cpu_count", "ram_used", "ram_total"]}}))}},
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
        },
    }
