"""The daemon reads a job's files as root from a directory the job's user owns: never through a
symlink, never blocking on a FIFO, never more than asked."""

from __future__ import annotations

import json
import os

import pytest

from dvlad.runtime.jobfiles import metrics_rows, open_job_file, read_job_file
from dvlad.runtime.supervisor import last_log_line
from dvlad.server.transfer import checkpoint_files


@pytest.fixture
def run(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({"secret": 1}) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    return run, secret


def test_a_symlink_or_a_fifo_reads_as_nothing_and_never_blocks(run):
    run, secret = run
    (run / "metrics.jsonl").symlink_to(secret)
    (run / "checkpoint.safetensors").symlink_to(secret)
    os.mkfifo(run / "summary.json")  # no writer: a blocking open would never return
    os.mkfifo(run / "job.log")
    for name in ("metrics.jsonl", "summary.json"):
        with pytest.raises(OSError):
            open_job_file(run / name)
    assert metrics_rows(run / "metrics.jsonl") == [] and metrics_rows(run / "metrics.jsonl", last=5) == []
    assert last_log_line(run / "job.log") == ""
    assert checkpoint_files(run) == []
    assert read_job_file(run / "missing") == b""


def test_regular_files_read_from_an_offset_up_to_a_limit(run):
    run, _ = run
    (run / "job.log").write_bytes(b"0123456789")
    (run / "checkpoint.safetensors").write_bytes(b"w")
    assert read_job_file(run / "job.log", 3, 4) == b"3456" and read_job_file(run / "job.log", 8) == b"89"
    assert checkpoint_files(run) == [("checkpoint.safetensors", run / "checkpoint.safetensors")]
