"""The cluster's shared secret: one line in a file only root may read, as the tokens file.

Why a file checked like the tokens file: whoever reads it can start processes as any user on every
node of the cluster (that is what a signed ``POST /v1/fed/parts`` does).
"""

from __future__ import annotations

from pathlib import Path

from dvlad.config import ConfigError
from dvlad.private_file import read_private_file

MIN_SECRET_CHARS = 32


def load_secret(path: Path) -> bytes:
    """The secret in ``path`` (surrounding whitespace dropped); a :class:`ConfigError` of one line for a
    file group or others can read, one not owned by root (or dvlad's user)
    (:func:`~dvlad.private_file.read_private_file`), or a secret too short."""
    text = read_private_file(path, "cluster secret file", "federation.secret_file")
    secret = text.strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError("federation.secret_file", f"{path}: the secret must be at least {MIN_SECRET_CHARS} "
                          f"characters (has {len(secret)}); make one with: openssl rand -hex 32")
    return secret.encode()
