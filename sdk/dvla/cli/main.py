"""The ``dvla`` group: global options, the connection, and errors turned into exit statuses.

Why errors are handled here once: every command talks to the daemon through the SDK, whose typed
errors map one to one onto the documented statuses (:mod:`dvla.cli.exits`); no command prints a
traceback for an expected failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from dvla import __version__
from dvla.cli import exits
from dvla.cli.output import error
from dvla.client import Client
from dvla.errors import DvlaError, InvalidSpec

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class State:
    """What the global options chose; the :class:`Client` is made on first use, so ``validate`` and
    ``--help`` never resolve a daemon address."""

    def __init__(self) -> None:
        self.host: str | None = None
        self.token: str | None = None
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            ctx = click.get_current_context()
            self._client = ctx.with_resource(Client(self.host, self.token))
        return self._client


def _set(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(ctx.ensure_object(State), name, value)
    return callback


def connection_options(f: F) -> F:
    """``--host``/``--token``, accepted before the command (``dvla --host H jobs``) or after it."""
    f = click.option("--token", metavar="TOKEN", expose_value=False, callback=_set("token"),
                     help="Bearer token for a TCP daemon (default: $DVLA_TOKEN, then the config file).")(f)
    return click.option("--host", metavar="ADDRESS", expose_value=False, callback=_set("host"),
                        help="Daemon address: /path/dvlad.sock, unix:///path, http://host:port or host:port "
                             "(default: $DVLA_HOST, ~/.config/dvla/config.toml, then the local socket).")(f)


class Integer(click.IntRange):
    """An integer within bounds, named "integer" in errors: click's IntRange says "'abc' is not a valid
    integer range", which reads as if a range were expected."""

    name = "integer"


class Number(click.FloatRange):
    """A number within bounds, named "number" in errors (click's FloatRange says "not a valid float
    range", as :class:`Integer` explains)."""

    name = "number"


pass_state = click.make_pass_decorator(State, ensure=True)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
JOB_ID = click.argument("job_id", metavar="ID", type=Integer(min=1))


class DvlaGroup(click.Group):
    """Runs a command and turns SDK errors and Ctrl-C into one line on stderr and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DvlaError as err:
            error(err.reason if isinstance(err, InvalidSpec) else str(err))  # the issues name their keys
            ctx.exit(exits.exit_code(err))
        except KeyboardInterrupt:
            error("interrupted")
            ctx.exit(exits.INTERRUPTED)


EPILOG = f"""\b
Examples:
  dvla validate examples/reach_ppo.toml
  dvla submit examples/reach_ppo.toml --follow
  dvla jobs --all
  dvla --host gpu1.lab:7447 --token "$TOKEN" status 12
  dvla report 12 -o reach.png
  dvla checkpoint 12 -o ckpt/; dvla metrics 12 > metrics.csv

\b
Shell completion (bash; zsh and fish: _DVLA_COMPLETE=zsh_source / fish_source):
  eval "$(_DVLA_COMPLETE=bash_source dvla)"

{exits.TABLE}
"""


@click.group(cls=DvlaGroup, context_settings=CONTEXT, epilog=EPILOG)
@connection_options
@click.version_option(__version__, prog_name="dvla")
def cli() -> None:
    """D-VLA: submit and watch reinforcement-learning jobs on a dvlad GPU server."""


def _register() -> None:
    from dvla.cli import jobs, machine, monitor, outputs, report, validate

    for module in (jobs, machine, validate, outputs, report, monitor):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """The ``dvla`` console script."""
    cli(prog_name="dvla")
