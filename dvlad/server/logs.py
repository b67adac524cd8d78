"""One JSON object per line on stderr: the journal keeps it, ``jq`` reads it.

Extras passed with ``log.info("msg", extra={...})`` become keys of the line.

Why :class:`QuietBadRequests`: aiohttp logs every malformed request (a bad request line, header or
chunk) at error level with a traceback. Anyone who can reach the TCP port can send those, so one
fuzzer run wrote thousands of such lines: the journal filled with noise and real errors drowned.
"""

from __future__ import annotations

import json
import logging
import time

from aiohttp.http_exceptions import HttpProcessingError

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class OneLineJson(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(time.time(), 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


BAD_REQUEST_EVERY_S = 10.0


class QuietBadRequests(logging.Filter):
    """aiohttp's reports of malformed requests (``HttpProcessingError``: the peer's fault, answered
    with 400) become one ``info`` line without a traceback at most every ``every_s`` seconds, with the
    number left out since the last one. Every other record passes unchanged."""

    def __init__(self, every_s: float = BAD_REQUEST_EVERY_S):
        super().__init__()
        self.every_s, self.next_at, self.left_out = every_s, 0.0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.WARNING or not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now < self.next_at:
            self.left_out += 1
            return False
        self.next_at = now + self.every_s
        record.peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg, record.args, record.exc_info, record.exc_text = "bad request", (), None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.reason = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
        record.left_out, self.left_out = self.left_out, 0
        return True


def setup(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineJson())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(QuietBadRequests())
