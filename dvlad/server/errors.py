"""Every error dvlad returns is one object: ``{"code", "field", "reason"}`` (plus ``issues`` for specs).

Why one shape: clients (the CLI, the SDK, scripts) print ``field: reason`` without guessing which
of aiohttp's plain-text pages or tracebacks they got.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, reason: str, field: str = "", **extra: Any):
        self.status, self.code, self.reason, self.field, self.extra = status, code, reason, field, extra
        super().__init__(reason)

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "field": self.field, "reason": self.reason, **self.extra}


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 408: "request_timeout", 409: "conflict", 413: "too_large",
              415: "unsupported_media_type"}
