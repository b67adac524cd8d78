"""Signed requests to peer daemons (aiohttp's client), over https when ``federation.tls_ca`` is set.

Why one session per daemon: its connection pool keeps a connection to each peer open between
heartbeats instead of a new TCP (and TLS) handshake every ``heartbeat_s``.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from dvlad.fed.signing import sign

REQUEST_TIMEOUT_S = 5.0


class PeerError(Exception):
    """A peer that could not be reached, or that answered with an error: ``status`` (0: unreachable)
    and the peer's reason."""

    def __init__(self, peer: str, status: int, reason: str):
        self.peer, self.status, self.reason = peer, status, reason
        super().__init__(f"{peer}: {reason}" if not status else f"{peer}: {status} {reason}")


class PeerClient:
    def __init__(self, secret: bytes, node: str, tls_ca: str = ""):
        self.secret, self.node = secret, node
        self.scheme = "https" if tls_ca else "http"
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=tls_ca) if tls_ca else False
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, peer: str, method: str, path: str, body: Any = None,
                   timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
        """``method path`` on ``peer`` (``host:port``), signed; the decoded JSON reply, or :class:`PeerError`."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json", **sign(self.secret, method, path, data, self.node)}
        try:
            async with self._session.request(method, f"{self.scheme}://{peer}{path}", data=data, headers=headers,
                                             ssl=self._ssl) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(peer, 0, f"unreachable: {exc or type(exc).__name__}") from None
        try:
            reply = json.loads(payload) if payload else None
        except ValueError:
            reply = None
        if status >= 400:
            reason = reply.get("reason") if isinstance(reply, dict) else payload[:200].decode(errors="replace")
            raise PeerError(peer, status, str(reason))
        return reply
