"""What dvlad reads of a shared base's files (dvlad/sharing/): a user's ``pretrained`` directory only as
that user, by a child process, within bounds of size and time (the daemon side runs as root, on one event
loop); a holder's manifest, in a directory its user owns, never through a link, a FIFO or a device."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from dvlad.sharing.base_digest import BaseUnreadable, read_digest
from dvlad.sharing.holders import Holder

OWNER = SimpleNamespace(user="ann", uid=os.geteuid(), gid=os.getegid())
"""This test's own user: the child reads as it without switching."""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A pretrained directory: a config and 100 bytes of weights, and a file that is not part of it."""
    directory = tmp_path / "base"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"w" * 100)
    (directory / "README.md").write_text("not part of the base")
    return directory


def test_a_pretrained_base_is_hashed_by_a_child_within_bounds_of_size_and_time(base):
    assert asyncio.run(read_digest(str(base), OWNER)) == hashlib.sha256(
        b"config.json{}model.safetensors" + b"w" * 100).hexdigest()
    where = re.escape(f"its base model (policy.args.pretrained = {base}), read as ann,")
    with pytest.raises(BaseUnreadable, match=f"{where} could not be read: its files hold 102 bytes, more than the "
                                             "101 a base may"):
        asyncio.run(read_digest(str(base), OWNER, max_bytes=101))
    with pytest.raises(BaseUnreadable, match=f"{where} was not read within 0.001 s, the bound on reading a base"):
        asyncio.run(read_digest(str(base), OWNER, timeout_s=0.001))


def test_a_holders_manifest_is_read_only_as_a_regular_file_of_its_own(tmp_path):
    holder = Holder("user:ann|cpu|k", tmp_path, "prefix-", pid=0, start=0.0, popen=None)
    holder.manifest_path.parent.mkdir()  # out/: the holder's user's
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"bytes": 1}))
    holder.manifest_path.symlink_to(elsewhere)
    assert holder.manifest() is None  # a link is never followed
    holder.manifest_path.unlink()
    os.mkfifo(holder.manifest_path)  # without a writer, opening it for reading would never return
    read: list[dict | None] = []
    reader = threading.Thread(target=lambda: read.append(holder.manifest()), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert read == [None]
    holder.manifest_path.unlink()
    elsewhere.rename(holder.manifest_path)
    assert holder.manifest() == {"bytes": 1}
