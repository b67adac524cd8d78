"""Job commands: ``submit``, ``jobs``, ``status``, ``logs``, ``cancel``.

Why ``submit`` prints only the id: ``id=$(dvla submit job.toml)`` is how scripts chain it into
``dvla status "$id"``; everything for people goes to stderr or behind ``--follow``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dvla.api import JOBS_PAGE, PRIORITIES
from dvla.cli import output
from dvla.cli.main import JOB_ID, Integer, State, connection_options, json_option, pass_state
from dvla.client import Client, Job
from dvla.errors import JobFailed
from dvla.jobtext import gpus_column, gpus_sentence
from dvla.metric_names import ENV_STEPS


def _follow(client: Client, job: Job, *, to_stderr: bool) -> dict[str, Any]:
    """Say why the job waits while it is queued (each time that changes), then print its log as it is
    written until it ends; its final record (``JobFailed`` if it did not succeed). Ctrl-C stops
    following, not the job."""
    try:
        for reason in job.pending(poll=0.5):
            output.note(f"job {job.id} queued: {reason}")
        for line in client.follow_logs(job.id):
            click.echo(line, err=to_stderr)
        return job.wait(poll=0.2)
    except KeyboardInterrupt:
        output.note(f"stopped following job {job.id}; it keeps running (`dvla cancel {job.id}` stops it)")
        raise


@click.command(epilog="""\b
Examples:
  dvla submit examples/reach_ppo.toml            # prints the job id
  id=$(dvla submit job.toml --priority 5) && dvla status "$id"
  dvla submit job.toml --follow                  # stream the log; exit 0 if it succeeds, 1 if not
  dvla submit job.toml --idempotency-key nightly-$(date +%F)   # a retry returns the same job

The file is checked locally first (as `dvla validate` does): an invalid file exits 2 before any request.""")
@click.argument("job_file", type=click.Path(path_type=Path))
@click.option("-f", "--follow", is_flag=True, help="Stream the job's log until it ends; exit with its outcome.")
@click.option("--priority", metavar="N", type=Integer(*PRIORITIES), default=0, show_default=True,
              help="Higher runs first among your queued jobs; users take turns regardless.")
@click.option("--idempotency-key", metavar="KEY", help="A retry with the same key returns the job the first made.")
@json_option
@connection_options
@pass_state
def submit(state: State, job_file: Path, follow: bool, priority: int, idempotency_key: str | None,
           as_json: bool) -> None:
    """Submit a job file and print its id.

    JOB_FILE is TOML (docs/jobs.md); it is checked here before it is sent."""
    client = state.client()
    job = client.submit(job_file, priority=priority, idempotency_key=idempotency_key)
    if as_json and not follow:
        output.print_json(job.record)
        return
    if not as_json:
        click.echo(job.id)
    if not follow:
        return
    try:
        final = _follow(client, job, to_stderr=as_json)  # with --json the log goes to stderr, the record out
    except JobFailed as failed:
        if as_json:
            output.print_json(failed.job)
        raise
    if as_json:
        output.print_json(final)
    else:
        output.note(f"job {job.id} succeeded")


@click.command("jobs", epilog="""\b
Examples:
  dvla jobs                      # your jobs
  dvla jobs --all                # everyone's (admins, or where the daemon allows it)
  dvla jobs --user alice --limit 5   # alice's five latest
  dvla jobs --user alice --json | jq '.[] | select(.state == "running") | .id'""")
@click.option("--all", "all_", is_flag=True, help="Every user's jobs (admins, or with users_see_all).")
@click.option("--user", metavar="USER", help="Only this user's jobs (another user's: as for --all).")
@click.option("--limit", metavar="N", type=Integer(min=1, max=JOBS_PAGE[1]),
              help=f"Only the most recent N jobs (of --user's, with it); "
                   f"default {JOBS_PAGE[0]}, at most {JOBS_PAGE[1]}.")
@json_option
@connection_options
@pass_state
def jobs_(state: State, all_: bool, user: str | None, limit: int | None, as_json: bool) -> None:
    """List jobs (yours, or everyone's with --all).

    In submit order: id, user, name, state, priority, GPUs, submit time, runtime and the reason: why a
    queued job waits (as squeue's REASON), else the reason of the last transition."""
    rows = state.client().jobs(all=all_, user=user, limit=limit)
    if as_json:
        output.print_json(rows)
        return
    table = output.table("ID", "USER", "NAME", "STATE", "PRI", "GPUS", "SUBMITTED", "RUNTIME", "REASON",
                         flex_last=True)
    for job in rows:
        table.add_row(str(job["id"]), job["user"], job["name"], output.state(job["state"]), str(job["priority"]),
                      gpus_column(job), output.when(job["submitted_at"]), output.runtime(job), output.reason(job))
    output.console().print(table if rows else "no jobs")


@click.command(epilog="""\b
Examples:
  dvla status 12
  dvla status 12 --json | jq -r .state""")
@JOB_ID
@json_option
@connection_options
@pass_state
def status(state: State, job_id: int, as_json: bool) -> None:
    """Show one job: its record, run directory, spec and events.

    The run directory (metrics, checkpoints, summary.json) is on the daemon's machine; from
    elsewhere, `dvla checkpoint ID` and `dvla metrics ID` fetch what it holds."""
    client = state.client()
    job = client.job(job_id)
    if as_json:
        output.print_json(job)
        return
    spec = job.get("spec") or {}
    fields = output.table("", "", wrap_last=True)
    fields.show_header = False
    for name, shown in (
            ("job", f"{job['id']} {job['name']} ({job['user']})"), ("state", output.state(job["state"])),
            ("reason", job.get("reason") or output.NONE),
            *([("waiting", job.get("pending_reason") or output.NONE)] if job["state"] == "queued" else []),
            ("priority", str(job["priority"])),
            ("gpus", gpus_sentence(job)), ("cpu slots", str(job["cpus"])),
            ("policy", spec.get("policy", {}).get("name", output.NONE)),
            ("env", spec.get("env", {}).get("name", output.NONE)),
            ("algo", spec.get("algo", {}).get("name", output.NONE)),
            ("env steps", _env_steps(client, job_id, spec)),
            ("submitted", output.when(job["submitted_at"])), ("started", output.when(job.get("started_at"))),
            ("ended", output.when(job.get("ended_at"))), ("runtime", output.runtime(job)),
            ("pid", str(job.get("pid") or output.NONE)),
            ("run dir", job.get("run_dir") or output.NONE),
            ("exit code", output.NONE if job.get("exit_code") is None else str(job["exit_code"]))):
        fields.add_row(f"[bold]{name}[/]", shown)
    events = output.table("TIME", "FROM", "TO", "REASON", title="events", wrap_last=True)
    for event in job.get("events", []):
        events.add_row(output.when(event["ts"]), event.get("from_state") or output.NONE,
                       output.state(event["to_state"]), event.get("reason") or "")
    con = output.console()
    con.print(fields)
    con.print()
    con.print(events)


def _env_steps(client: Client, job_id: int, spec: dict[str, Any]) -> str:
    """How far the job's env-step budget got, "56,384 of 1,000,000": its newest metric row's count ("-"
    before it has one). It showed the budget alone, which read as the steps of a job stopped long before."""
    rows = client.metrics(job_id, 1)
    done = f"{int(rows[-1][ENV_STEPS]):,}" if rows and ENV_STEPS in rows[-1] else output.NONE
    budget = spec.get("train", {}).get("total_env_steps")
    return f"{done} of {budget:,}" if isinstance(budget, int) else done


@click.command(epilog="""\b
Examples:
  dvla logs 12                   # the log so far
  dvla logs 12 -f                # and what follows, until the job ends (Ctrl-C stops following)""")
@JOB_ID
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as they are written, until the job ends.")
@connection_options
@pass_state
def logs(state: State, job_id: int, follow: bool) -> None:
    """Print a job's log (its stdout and stderr)."""
    client = state.client()
    if follow:
        for line in client.follow_logs(job_id):
            click.echo(line)
    else:
        click.echo(client.logs(job_id), nl=False)


@click.command(epilog="""\b
Examples:
  dvla cancel 12                 # queued: cancelled at once; running: SIGTERM, then SIGKILL
  dvla cancel 12 --json

Cancelling a job that already ended exits 1 with the daemon's reason.""")
@JOB_ID
@json_option
@connection_options
@pass_state
def cancel(state: State, job_id: int, as_json: bool) -> None:
    """Cancel a job (yours, or anyone's for an admin)."""
    job = state.client().cancel(job_id)
    if as_json:
        output.print_json(job)
    else:
        output.console().print(f"job {job['id']} ", output.state(job["state"]), sep="")


COMMANDS = (submit, jobs_, status, logs, cancel)
