"""The SDK's exceptions: one per thing a caller may want to handle differently.

Why typed: a script waits for a job and must tell "the job failed" (``JobFailed``) from "the daemon is
not running" (``DaemonUnavailable``) from "you may not see that job" (``PermissionDenied``) without
parsing messages. Every error the daemon sends is ``{"code", "field", "reason"}``; each exception keeps
those three, so the CLI can print ``field: reason`` and exit with the right status.
"""

from __future__ import annotations

from typing import Any


class DvlaError(Exception):
    """Base of every SDK error. ``code``/``field``/``reason`` are the daemon's (or the SDK's own)."""

    def __init__(self, reason: str, *, code: str = "error", field: str = "", status: int | None = None):
        self.reason, self.code, self.field, self.status = reason, code, field, status
        super().__init__(f"{field}: {reason}" if field else reason)


class ApiError(DvlaError):
    """The daemon refused a request for a reason that has no more specific class."""


class NotFound(ApiError):
    """No such job (or route): HTTP 404."""


class PermissionDenied(ApiError):
    """The caller may not see or act on this (HTTP 403), or its token was refused (HTTP 401)."""


class Conflict(ApiError):
    """The request does not fit the state of things (HTTP 409): cancelling a job that already ended, or
    submitting one that asks for more GPUs or CPU slots than the whole node has (code ``exceeds_node``)."""


class InvalidSpec(ApiError):
    """The job spec was refused. ``issues`` lists every problem: ``[{"field", "reason"}, ...]``."""

    def __init__(self, reason: str, *, issues: list[dict[str, str]], code: str = "invalid_spec", field: str = "",
                 status: int | None = 400):
        super().__init__(reason, code=code, field=field, status=status)
        self.issues = issues


class DaemonUnavailable(DvlaError):
    """Nothing answered where the SDK looked for dvlad; ``where`` says where, the message how to start it."""

    def __init__(self, where: str, cause: str):
        self.where = where
        super().__init__(f"cannot reach dvlad at {where}: {cause}. Start a personal daemon with `dvlad --user`, "
                         "ask the admin to `systemctl start dvlad`, or point DVLA_HOST at a running one",
                         code="unavailable")


class JobFailed(DvlaError):
    """A job ended failed or cancelled. ``job`` is its final record; ``state`` and ``reason`` say how."""

    def __init__(self, job: dict[str, Any]):
        self.job, self.state = job, job["state"]
        super().__init__(f"job {job['id']} {job['state']}: {job.get('reason') or 'no reason given'}",
                         code=job["state"], field="")
        self.reason = job.get("reason") or ""


_BY_STATUS: dict[int, type[ApiError]] = {401: PermissionDenied, 403: PermissionDenied, 404: NotFound,
                                         409: Conflict}


def error_from_reply(status: int, body: Any) -> ApiError:
    """The exception for an error reply (``body`` decoded; anything not an error object is shown as is)."""
    if not isinstance(body, dict) or "reason" not in body:
        return ApiError(f"HTTP {status}: {str(body)[:500]}", code="http_error", status=status)
    code, field, reason = str(body.get("code", "error")), str(body.get("field", "")), str(body["reason"])
    if code == "invalid_spec":
        return InvalidSpec(reason, issues=list(body.get("issues", [])), field=field, status=status)
    return _BY_STATUS.get(status, ApiError)(reason, code=code, field=field, status=status)
