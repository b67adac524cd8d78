"""Who may hold a connection to dvlad: caps on TCP connections, so that local users always get in.

Why: a TCP port is reachable by peers who have no token. Before this, 300 of them opening
connections and sending nothing exhausted a file limit of 256, and then the Unix socket's users
(who hold the machine's GPUs) could not connect at all. So:

- a TCP connection counts as *unauthenticated* until one of its requests carries a valid token; at
  most ``daemon.max_tcp_unauthenticated`` of those are open at once, and further ones are closed as
  soon as they are accepted;
- all TCP connections together are capped at ``daemon.max_tcp_connections`` and at half the file
  limit, so the other half stays for the Unix socket, the store and the jobs' files;
- Unix-socket connections are never refused here.

How long a connection may take to send its request head is aiohttp's ``keepalive_timeout``, which it
counts from the connection's start and from the end of each reply (``daemon.header_timeout_s``); a
body that stalls is the routes' (:func:`dvlad.server.codec.read_body`, the upload's chunk reader).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("dvlad")


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (systemd's default soft limit is 1024, its
    hard one far higher); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class ConnectionGuard:
    """Counts TCP connections, and those not yet authenticated, and refuses those over the caps."""

    def __init__(self, max_tcp: int, max_unauthenticated: int):
        self.max_tcp, self.max_unauthenticated = max_tcp, min(max_unauthenticated, max_tcp)
        self.tcp: set[asyncio.BaseTransport] = set()
        self.unauthenticated: set[asyncio.BaseTransport] = set()

    @classmethod
    def for_file_limit(cls, max_tcp: int, max_unauthenticated: int) -> ConnectionGuard:
        """The configured caps, with all TCP connections at most half the open-file limit now in force."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return cls(min(max_tcp, max(1, soft // 2)), max_unauthenticated)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Whether a new TCP connection may stay (counted if so)."""
        if len(self.tcp) >= self.max_tcp or len(self.unauthenticated) >= self.max_unauthenticated:
            return False
        self.tcp.add(transport)
        self.unauthenticated.add(transport)
        return True

    def authenticated(self, transport: asyncio.BaseTransport | None) -> None:
        """One of the connection's requests carried a valid token: it no longer counts as a stranger's."""
        self.unauthenticated.discard(transport)

    def closed(self, transport: asyncio.BaseTransport) -> None:
        self.tcp.discard(transport)
        self.unauthenticated.discard(transport)


GUARD = web.AppKey("connection_guard", ConnectionGuard)


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one TCP connection, behind :class:`ConnectionGuard`: a connection over
    the caps is aborted before aiohttp sees it; otherwise every event is passed through."""

    def __init__(self, inner: Any, guard: ConnectionGuard):
        self.inner, self.guard = inner, guard
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.guard.admit(transport):
            transport.abort()  # its file descriptor is free again at once
            return
        self.transport = transport
        self.inner.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.transport is not None:
            self.guard.closed(self.transport)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.transport is not None else None

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.inner.resume_writing()


class GuardedTCPSite(web.BaseSite):
    """A TCP listener whose connections go through a :class:`ConnectionGuard` (aiohttp's ``TCPSite``
    hands each straight to the server)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, backlog: int = 128,
                 ssl_context: ssl.SSLContext | None = None):
        super().__init__(runner, backlog=backlog, ssl_context=ssl_context)
        self._host, self._port, self.guard = host, port, guard

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server: Callable[[], Any] = self._runner.server
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(server(), self.guard), self._host, self._port, reuse_address=True,
            family=socket.AF_UNSPEC, backlog=self._backlog, ssl=self._ssl_context)
