"""Request and response bodies: msgpack or JSON by content type, with size and nesting limits.

Why limits before decoding is trusted: a socket open to every lab member must not be stalled by a
1 GB body or a 100 000-deep list (the decoders recurse).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import msgpack
from aiohttp import web

from dvlad.server.errors import ApiError
from dvlad.server.limits import INT_MAX, INT_MIN

MSGPACK = "application/msgpack"
JSON = "application/json"
_MSGPACK_TYPES = {MSGPACK, "application/x-msgpack", "application/vnd.msgpack"}


def _check_tree(value: Any, max_depth: int) -> None:
    """Refuse (400, naming the field) what no client could read back: nesting deeper than
    ``max_depth``, non-string map keys, integers outside 64 bits, NaN and infinities."""
    stack = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise ApiError(400, "bad_body", f"body nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                if not all(isinstance(k, str) for k in item):
                    raise ApiError(400, "bad_body", "map keys must be strings", field=path)
                stack.extend((v, depth + 1, f"{path}.{k}" if path else k) for k, v in item.items())
            else:
                stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
            raise ApiError(400, "out_of_range", f"integer {item} is outside the 64-bit range "
                           f"[-2^63, 2^63-1]", field=path)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ApiError(400, "out_of_range", f"{item} is not a finite number (NaN and infinities are "
                           "refused: strict JSON has no way to write them)", field=path)


def _stalled(timeout_s: float) -> ApiError:
    return ApiError(408, "request_timeout", f"no bytes of the body for {timeout_s:g} s (daemon.body_timeout_s)")


async def timed_chunks(chunks: AsyncIterator[bytes], timeout_s: float) -> AsyncIterator[bytes]:
    """``chunks``, each of which must arrive within ``timeout_s``: a client that stops sending a
    body mid-way must not hold its connection (and a file descriptor) for ever."""
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await anext(chunks, None)
        except TimeoutError:
            raise _stalled(timeout_s) from None
        if chunk is None:
            return
        yield chunk


async def _read_capped(request: web.Request, cap: int, timeout_s: float) -> bytes:
    """The body up to its end or ``cap`` bytes, whichever comes first; 408 if it stalls ``timeout_s``.

    Why a loop: one ``read(n)`` returns only what has arrived so far, so a large body that comes
    in several packets would be cut short and fail to decode."""
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await request.content.read(cap - size)
        except TimeoutError:
            raise _stalled(timeout_s) from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def read_body(request: web.Request, max_bytes: int, max_depth: int, timeout_s: float) -> Any:
    """The decoded body, or an ApiError (413 too large, 415 unknown type, 400 undecodable/too deep,
    408 stalled for ``timeout_s``)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "too_large", f"body of {request.content_length} bytes; the limit is {max_bytes}")
    raw = await _read_capped(request, max_bytes + 1, timeout_s)
    if len(raw) > max_bytes:
        raise ApiError(413, "too_large", f"body over the limit of {max_bytes} bytes")
    kind = request.content_type
    try:
        if kind in _MSGPACK_TYPES:
            value = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
        elif kind == JSON:
            value = json.loads(raw)
        else:
            raise ApiError(415, "unsupported_media_type", f"content type {kind!r}; send {JSON} or {MSGPACK}",
                           field="Content-Type")
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as exc:
        raise ApiError(400, "bad_body", f"cannot decode the {kind} body: {exc}") from None
    _check_tree(value, max_depth)
    return value


def wants_msgpack(request: web.Request) -> bool:
    return any(t in request.headers.get("Accept", "") for t in _MSGPACK_TYPES)


def _readable(value: Any) -> Any:
    """``value`` with what strict JSON and msgpack cannot carry made plain: NaN and infinities as
    null, integers beyond 64 bits as decimal strings (a record stored before submit refused them)."""
    if isinstance(value, dict):
        return {k: _readable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_readable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value < 1 << 64:
        return str(value)
    return value


def respond(request: web.Request, body: Any, status: int = 200) -> web.Response:
    """``body`` as msgpack if the client accepts it, else strict JSON (no bare ``NaN``)."""
    if wants_msgpack(request):
        try:
            packed = msgpack.packb(body, use_bin_type=True)
        except (OverflowError, ValueError):
            packed = msgpack.packb(_readable(body), use_bin_type=True)
        return web.Response(body=packed, status=status, content_type=MSGPACK)
    try:
        text = json.dumps(body, allow_nan=False)
    except ValueError:
        text = json.dumps(_readable(body), allow_nan=False)
    return web.Response(text=text, status=status, content_type=JSON)
