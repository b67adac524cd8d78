"""The tokens file and the cluster secret are read by one reader (dvlad/private_file.py): the same
checks, each refusal one line naming the file and the key."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dvlad.config import ConfigError
from dvlad.fed.secret import load_secret
from dvlad.server.auth import load_tokens

READERS = [pytest.param(load_tokens, "", "tokens file", id="tokens"),
           pytest.param(load_secret, "federation.secret_file", "cluster secret file", id="secret")]


@pytest.mark.timeout(10)  # before the shared reader, a FIFO hung dvlad's start for ever (open waits for a writer)
@pytest.mark.parametrize("reader, key, what", READERS)
def test_a_fifo_or_a_directory_is_refused_at_once(tmp_path: Path, reader: Callable[[Path], Any], key: str,
                                                  what: str):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match=f"{fifo}: the {what} must be a regular file, not a FIFO") as err:
        reader(fifo)
    assert err.value.key == key
    with pytest.raises(ConfigError, match=f"the {what} must be a regular file, not a directory"):
        reader(tmp_path)


@pytest.mark.parametrize("reader, key, what", READERS)
def test_both_files_get_the_same_checks_and_name_their_key(tmp_path: Path, reader: Callable[[Path], Any], key: str,
                                                           what: str):
    path = tmp_path / "private"
    with pytest.raises(ConfigError, match=f"{path}: cannot read the {what}: No such file") as err:
        reader(path)
    assert err.value.key == key
    path.write_bytes(b"k" * 40 + b" root\n")
    for mode in (0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(ConfigError, match=rf"must be owned by root and mode 0600 \(is {oct(mode)}\)") as err:
            reader(path)
        assert err.value.key == key
    path.chmod(0o600)
    reader(path)
    path.write_bytes(b"\xff" * 40 + b" root\n")
    with pytest.raises(ConfigError, match=f"the {what} is not UTF-8 text"):
        reader(path)
