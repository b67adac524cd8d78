"""What a job produced, fetched through the daemon: ``checkpoint`` (its latest weights) and ``metrics``
(its metric rows).

Why through the daemon and not from the run directory: a job's run directory (``dvla status`` shows
it) lies on the daemon's machine, owned by the job's user; a user on a laptop, talking to a remote
daemon over TCP, reaches it only through the API, as the SDK's ``Job.checkpoint`` and ``metrics`` do.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click

from dvla.cli import output
from dvla.cli.main import JOB_ID, Integer, State, connection_options, json_option, pass_state
from dvla.errors import DvlaError


@click.command(epilog="""\b
Examples:
  dvla checkpoint 12                     # into ./job-12/
  dvla checkpoint 12 -o ckpt/            # ckpt/checkpoint.safetensors
  dvla checkpoint 12 --json | jq -r '.files[0]'

\b
The latest checkpoint the job wrote (it may still be running), as the files of its run directory:
start a job from it with `policy.checkpoint = "ckpt"`. A job with none yet exits 1.""")
@JOB_ID
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the files into (default: job-ID).")
@json_option
@connection_options
@pass_state
def checkpoint(state: State, job_id: int, out: Path | None, as_json: bool) -> None:
    """Download a job's latest checkpoint.

    Prints the path of each file written."""
    dest = out or Path(f"job-{job_id}")
    try:
        files = state.client().checkpoint(job_id, dest)
    except ValueError as exc:  # an archive member that would land outside DIR: nothing was written
        raise DvlaError(f"job {job_id}'s checkpoint archive was refused: {exc}", code="bad_checkpoint") from None
    except OSError as exc:
        raise DvlaError(f"cannot write the checkpoint into {dest}: {exc.strerror or exc}", code="bad_output") from None
    if as_json:
        output.print_json({"job_id": job_id, "files": [str(f) for f in files]})
    else:
        for file in files:
            click.echo(str(file))


def _cell(value: Any) -> Any:
    """A CSV cell: numbers and text as they are, anything else (the staleness histogram) as JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else value


@click.command(epilog="""\b
Examples:
  dvla metrics 12 > metrics.csv          # every row, as CSV with a header
  dvla metrics 12 --last 1 --json | jq .success_rate
  dvla metrics 12 --json | jq -s 'map(.env_steps_per_s) | add / length'

\b
One row per learner update (env_steps, env_steps_per_s, success_rate, episode_return, losses,
each lane's busy fraction, staleness, ...): the job's metrics.jsonl, read while it runs too. CSV
columns are every key of the rows, in the order they first appear; --json prints JSON lines, one
object per row. A job with no rows yet exits 1.""")
@JOB_ID
@click.option("--last", metavar="N", type=Integer(min=1), help="Only the last N rows.")
@json_option
@connection_options
@pass_state
def metrics(state: State, job_id: int, last: int | None, as_json: bool) -> None:
    """Print a job's metric rows as CSV (or JSON lines)."""
    client = state.client()
    rows = client.metrics(job_id, last or 0)
    if not rows:
        job = client.job(job_id)
        raise DvlaError(f"job {job_id} ({job['state']}) has written no metric rows yet", code="no_metrics")
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(sys.stdout, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})


COMMANDS = (checkpoint, metrics)
