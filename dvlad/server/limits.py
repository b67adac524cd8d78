"""The limits the API enforces, in one place: the routes check them, ``/v1/openapi.json`` states them
(so schema-driven clients and fuzzers know them, and a test holds the two together).

The size and depth limits of bodies are the config's (``daemon.max_body_bytes``, ``max_depth``,
``max_upload_bytes``); these are the fixed ones.
"""

from __future__ import annotations

from dvla.api import PRIORITIES

INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
"""The integers a body may hold: 64-bit signed, as TOML (the job's spec file), SQLite and every
client's msgpack decoder take them."""
JOB_ID_DIGITS = 18
"""A job id in a path: a decimal number of at most this many digits (else 404)."""
IDEMPOTENCY_KEY = r"^[A-Za-z0-9._:-]{1,128}$"
QUERY_RANGES: dict[str, tuple[int, int]] = {"limit": (1, 100_000), "last": (0, 100_000),
                                            "offset": (0, 1 << 62), "after": (0, 1 << 62)}
"""Integer query parameters: their inclusive ranges (outside: 400 bad_query)."""
PRIORITY_RANGE = PRIORITIES
