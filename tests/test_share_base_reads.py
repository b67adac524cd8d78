"""What dvlad reads of a shared base's files (dvlad/sharing/): a holder's manifest, in a directory its
user owns, never through a link, a FIFO or a device."""

from __future__ import annotations

import json
import os
import threading

from dvlad.sharing.holders import Holder


def test_a_holders_manifest_is_read_only_as_a_regular_file_of_its_own(tmp_path):
    holder = Holder("user:ann|cpu|k", tmp_path, "prefix-", pid=0, start=0.0, popen=None)
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
