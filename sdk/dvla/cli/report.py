"""``dvla report``: a job's metric curves as a PNG, drawn on the client from ``client.metrics`` rows."""

from __future__ import annotations

from pathlib import Path

import click

from dvla import metric_names as m
from dvla.cli.main import JOB_ID, State, connection_options, pass_state
from dvla.errors import DvlaError


@click.command(epilog="""\b
Examples:
  dvla report 12                       # writes job-12.png
  dvla report 12 -o runs/reach.png --x time_s

\b
Panels, one unit each: success rate (from 20 ended episodes on), episode return, env steps/s,
infer observations/s, learn samples/s and updates/min (over 10 rows), time per update and per
publish, each lane's busy fraction, GPU busy (jobs on a GPU), staleness, losses, entropy,
approx KL, clip fraction, explained variance (PPO). Works while the job runs.""")
@JOB_ID
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write (default: job-ID.png).")
@click.option("--x", "x_axis", type=click.Choice([m.ENV_STEPS, m.TIME_S]), default=m.ENV_STEPS, show_default=True,
              help="The x axis: env steps, or wall-clock time (drawn in minutes).")
@connection_options
@pass_state
def report(state: State, job_id: int, out: Path | None, x_axis: str) -> None:
    """Plot a job's metrics to a PNG."""
    from dvla.report import plot_runs  # matplotlib loads only for this command

    client = state.client()
    job = client.job(job_id)
    rows = client.metrics(job_id)
    if not rows:
        raise DvlaError(f"job {job_id} ({job['state']}) has written no metric rows yet", code="no_metrics")
    path = plot_runs([(job["name"], rows)], out or Path(f"job-{job_id}.png"), x_axis,
                     title=f"job {job_id} {job['name']} ({job['state']}, {len(rows)} updates)")
    click.echo(str(path))


COMMANDS = (report,)
