"""The cluster's shared secret: one line in a file only root may read, as the tokens file.

Why a file checked like the tokens file: whoever reads it can start processes as any user on every
node of the cluster (that is what a signed ``POST /v1/fed/parts`` does).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dvlad.config import ConfigError

MIN_SECRET_CHARS = 32


def load_secret(path: Path) -> bytes:
    """The secret in ``path`` (surrounding whitespace dropped); a :class:`ConfigError` of one line for a
    file group or others can read, one not owned by root (or dvlad's user), or a secret too short."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("federation.secret_file", f"{path}: cannot read: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid not in (0, os.geteuid()):
        raise ConfigError("federation.secret_file",
                          f"{path}: must be owned by root and mode 0600 (is {oct(st.st_mode & 0o777)})")
    secret = text.strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError("federation.secret_file", f"{path}: the secret must be at least {MIN_SECRET_CHARS} "
                          f"characters (has {len(secret)}); make one with: openssl rand -hex 32")
    return secret.encode()
