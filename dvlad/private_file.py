"""Reading a file only root may read: the tokens file and the cluster secret.

Why one reader for both: whoever reads either file can act as any user (a token names its user; the
secret signs ``POST /v1/fed/parts``), so both get the same checks and the same one-line errors. Why
the checks are made on the open file (``fstat``), not on the path before reading it: the file checked
is the file read, and a FIFO or a directory in the config is refused at once instead of hanging
dvlad's start (opening a FIFO waits for a writer; ``O_NONBLOCK`` does not).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dvlad.config import ConfigError


def read_private_file(path: Path, what: str, key: str = "") -> str:
    """The text of ``path`` (the ``what`` of an error: "tokens file"), or a :class:`ConfigError` of one
    line for ``key`` naming the file: one that cannot be read, is not a regular file, that group or
    others can read or write, that neither root nor dvlad's user owns, or that is not UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(key, f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(key, f"{path}: the {what} must be a regular file, not a {_kind(st.st_mode)}")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid not in (0, os.geteuid()):
            raise ConfigError(key, f"{path}: must be owned by root and mode 0600 (is {oct(st.st_mode & 0o777)})")
        with open(fd, "rb", closefd=False) as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(key, f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(key, f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"
