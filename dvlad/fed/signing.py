"""Signed peer requests: HMAC-SHA256 over the method, the path (with its query), the SHA-256 of the
body, a timestamp, a random nonce and the sender's name.

Why each part: the method, path and body digest bind the signature to this very request (a signed
heartbeat cannot be replayed as a lease); the timestamp bounds how long a captured request is worth
anything (``replay_window_s``); the nonce, kept by the receiver for that window, makes the same
request count once. The secret never travels.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

TIME = "X-Dvla-Fed-Time"
NONCE = "X-Dvla-Fed-Nonce"
NODE = "X-Dvla-Fed-Node"
SIGNATURE = "X-Dvla-Fed-Signature"
HEADERS = (TIME, NONCE, NODE, SIGNATURE)
MAX_NONCES = 1 << 20
"""Nonces kept at most (a flood of validly signed requests needs the secret; this bounds memory anyway)."""


def _mac(secret: bytes, method: str, path: str, body: bytes, ts: str, nonce: str, node: str) -> str:
    message = "\n".join((method.upper(), path, hashlib.sha256(body).hexdigest(), ts, nonce, node))
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, path: str, body: bytes, node: str, now: float | None = None,
         nonce: str | None = None) -> dict[str, str]:
    """The headers that sign this request as sent by ``node``."""
    ts = f"{time.time() if now is None else now:.3f}"
    nonce = nonce or secrets.token_hex(16)
    return {TIME: ts, NONCE: nonce, NODE: node, SIGNATURE: _mac(secret, method, path, body, ts, nonce, node)}


class Refused(Exception):
    """A peer request that is not validly signed; the message says which check failed."""


class Verifier:
    """Checks signatures and remembers nonces for ``window_s`` (one per daemon)."""

    def __init__(self, secret: bytes, window_s: float):
        self.secret, self.window_s = secret, window_s
        self._nonces: OrderedDict[str, float] = OrderedDict()
        """nonce -> when it may be forgotten (wall clock: the timestamps are), oldest first."""

    def verify(self, method: str, path: str, body: bytes, headers: dict[str, str] | object,
               now: float | None = None) -> str:
        """The sender's node name, or :class:`Refused` saying why not."""
        get = headers.get  # type: ignore[attr-defined]
        ts, nonce, node, given = (get(h, "") for h in HEADERS)
        if not (ts and nonce and given):
            raise Refused("not a signed peer request (no signature headers)")
        try:
            sent = float(ts)
        except ValueError:
            raise Refused(f"bad timestamp {ts[:40]!r}") from None
        now = time.time() if now is None else now
        if abs(now - sent) > self.window_s:
            raise Refused(f"timestamp {now - sent:+.0f} s from now, outside the {self.window_s:g} s window")
        if not hmac.compare_digest(_mac(self.secret, method, path, body, ts, nonce, node), given):
            raise Refused("bad signature (another cluster secret, or the request was altered)")
        self._forget(now)
        if nonce in self._nonces:
            raise Refused("replayed nonce")
        self._nonces[nonce] = sent + self.window_s
        if len(self._nonces) > MAX_NONCES:
            self._nonces.popitem(last=False)
        return node

    def _forget(self, now: float) -> None:
        """Drop nonces whose requests the window refuses anyway (roughly in order: clocks differ)."""
        while self._nonces:
            nonce, until = next(iter(self._nonces.items()))
            if until >= now:
                return
            del self._nonces[nonce]
