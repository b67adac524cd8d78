"""``/v1/openapi.json``: the API as OpenAPI 3.1. A test checks it against the app's routes and replies.

Response schemas list their ``required`` keys: that is the contract clients rely on.
"""

from __future__ import annotations

from typing import Any

from dvla.api import JOBS_PAGE

JOB_KEYS = ["id", "user", "uid", "name", "priority", "gpus", "cpus", "state", "reason", "submitted_at",
            "started_at", "ended_at", "gpu_ids", "pid", "exit_code", "pending_reason"]
ERROR = {"type": "object", "required": ["code", "field", "reason"],
         "properties": {"code": {"type": "string"}, "field": {"type": "string"}, "reason": {"type": "string"}}}
JOB = {"type": "object", "required": JOB_KEYS}
EVENT = {"type": "object", "required": ["id", "job_id", "ts", "from_state", "to_state", "reason"]}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}


def _query(name: str, kind: str, doc: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": doc}


def _ok(schema: dict[str, Any], media: str = "application/json", status: str = "200") -> dict[str, Any]:
    errors = {code: {"description": "error", "content": {"application/json": {"schema": ERROR}}}
              for code in ("400", "401", "403", "404")}
    return {status: {"description": "ok", "content": {media: {"schema": schema}}}, **errors}


def _obj(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "dvlad", "version": "1",
             "description": "D-VLA daemon. Unix socket: identity from peer credentials; TCP: Bearer token. "
                            "Bodies JSON or msgpack (Content-Type / Accept)."},
    "paths": {
        "/v1/jobs": {
            "post": {"summary": "Submit a job (durable before the reply; idempotent per user and key)",
                     "requestBody": {"required": True, "content": {m: {"schema": {
                         "type": "object", "additionalProperties": False,
                         "properties": {"spec": {"type": "object"}, "idempotency_key": {"type": "string"},
                                        "priority": {"type": "integer"}}}}
                         for m in ("application/json", "application/msgpack")}},
                     "responses": {**_ok(_obj(job=JOB, created={"type": "boolean"}), status="201"),
                                   "200": {"description": "the job this idempotency key already made",
                                           "content": {"application/json": {"schema": _obj(
                                               job=JOB, created={"type": "boolean"})}}},
                                   "409": {"description": "the job asks for more GPUs or CPU slots than the "
                                                          "whole node has (code exceeds_node)",
                                           "content": {"application/json": {"schema": ERROR}}},
                                   "413": {"description": "body too large"}, "415": {"description": "bad type"}}},
            "get": {"summary": "List jobs (own; all=1 or another user= for admins or when the config allows)",
                    "parameters": [_query("all", "boolean", "every user's jobs"),
                                   _query("user", "string", "only this user's jobs (filtered before limit)"),
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
        "/v1/uploads": {"post": {
            "summary": "Upload a tar of files (a checkpoint) to STATE_DIR/uploads/UID/SHA256/, owned by the caller; "
                       "regular files and directories only, relative names, at most daemon.max_upload_bytes",
            "requestBody": {"required": True, "content": {"application/x-tar": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {**_ok(_obj(path={"type": "string"}, sha256={"type": "string"}, bytes={"type": "integer"},
                                     files={"type": "array", "items": {"type": "string"}}), status="201"),
                          "413": {"description": "over daemon.max_upload_bytes"},
                          "415": {"description": "not application/x-tar"}}}},
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
            "summary": "Live per-GPU stats (NVML, sampled at most every 0.5 s) and the job holding each GPU; "
                       "live fields are null where the node has no NVML (source fixture or none), and null "
                       "with `error` (NVML's error) for a GPU NVML cannot reach",
            "responses": _ok(_obj(source={"type": "string"}, host={"type": "string"}, gpus={
                "type": "array", "items": {"type": "object", "required": [
                    "index", "name", "uuid", "utilization", "memory_used", "memory_total", "temperature",
                    "power_draw", "power_limit", "job"]}}))}},
        "/v1/openapi.json": {"get": {"summary": "This document",
                                     "responses": _ok({"type": "object", "required": ["openapi", "paths"]})}},
        "/metrics": {"get": {"summary": "Prometheus text exposition",
                             "responses": _ok({"type": "string"}, "text/plain")}},
    },
}
