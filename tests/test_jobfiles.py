"""The daemon reads a job's files as root from a directory the job's user owns: never through a
symlink, never blocking on a FIFO, never more than asked."""

from __future__ import annotations

import json
import os

import pytest

from dvlad.runtime.jobfiles import metrics_rows, open_job_file, read_job_file
from dvlad.runtime.supervisor import last_log_line
from dvlad.server.transfer import LIST_MAX, Unlisted, checkpoint_files


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


def test_a_run_directory_is_looked_through_within_bounds_and_never_through_a_link(run):
    run, _ = run
    (run / "checkpoint.safetensors").write_bytes(b"w")
    linked = run.with_name("linked")
    linked.symlink_to(run, target_is_directory=True)  # a run/ swapped for a link to a directory with a checkpoint
    assert checkpoint_files(linked) == []
    with pytest.raises(Unlisted, match=f"{run} was not looked through within the bounds of .* and 0 s"):
        checkpoint_files(run, timeout_s=0.0)  # a slow file system: dvlad stops looking, and says so
    for i in range(LIST_MAX):  # a user who fills run/ with names
        (run / f"{i}.txt").touch()
    with pytest.raises(Unlisted, match=f"{run} was not looked through within the bounds of {LIST_MAX} entries"):
        checkpoint_files(run)
