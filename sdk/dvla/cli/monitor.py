"""``dvla top``: the live full-screen monitor. The app lives in :mod:`dvla.top`; this only wires the
command line to it (imported on use: textual loads only when someone runs ``top``)."""

from __future__ import annotations

import click

from dvla.cli.main import Number, State, connection_options, pass_state
from dvla.top.poller import MIN_REFRESH_S


@click.command(epilog="""\b
Examples:
  dvla top
  dvla top --refresh 1 --host gpu1.lab:7447""")
@click.option("--refresh", metavar="SECONDS", type=Number(min=MIN_REFRESH_S), default=0.5, show_default=True,
              help=f"Seconds between screen refreshes (at least {MIN_REFRESH_S}).")
@connection_options
@pass_state
def top(state: State, refresh: float) -> None:
    """A live full-screen monitor (q quits).

    The GPUs, the queue, and a selected job's lanes, staleness and throughput."""
    from dvla.top.app import run_top

    run_top(state.client(), refresh)


COMMANDS = (top,)
