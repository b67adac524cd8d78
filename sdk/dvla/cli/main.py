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
from dvla.cli.output import error, print_json
from dvla.client import Client
from dvla.errors import DvlaError, InvalidSpec, JobFailed

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class State:
    """What the global options chose; the :class:`Client` is made on first use, so ``validate`` and
    ``--help`` never resolve a daemon address."""

    def __init__(self) -> None:
        self.host: str | None = None
        self.token: str | None = None
        self.as_json = False
        """The command was given ``--json``: a failure prints its error object on stdout too."""
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
                        help="Daemon address: a socket's path (/path/dvlad.sock, ./dvlad.sock, dvlad.sock), "
                             "unix:///path, host:port, http://host:port or https://host[:port] "
                             "(default: $DVLA_HOST, ~/.config/dvla/config.toml, then the local socket).")(f)


class Integer(click.IntRange):
    """An integer within bounds, named "integer" in errors: click's IntRange says "'abc' is not a valid
    integer range", which reads as if a range were expected."""

    name = "integer"


class Number(click.FloatRange):
    """A number within bounds, named "number" in errors (click's FloatRange says "not a valid float
    range", as :class:`Integer` explains)."""

    name = "number"


def _note_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(State).as_json = True
    return value


pass_state = click.make_pass_decorator(State, ensure=True)
json_option = click.option("--json", "as_json", is_flag=True, callback=_note_json,
                           help="Print JSON for scripts instead of a table (a failure: its error object).")
JOB_ID = click.argument("job_id", metavar="ID", type=Integer(min=1))


def error_object(err: DvlaError) -> dict[str, Any]:
    """What ``--json`` prints on stdout for a failure: the daemon's error shape ``{"code", "field",
    "reason"}`` (an invalid spec adds its ``issues``), for the SDK's own errors too (``unavailable``,
    ``bad_config``, ``invalid_spec`` found before sending)."""
    body: dict[str, Any] = {"code": err.code, "field": err.field, "reason": err.reason}
    if isinstance(err, InvalidSpec):
        body["issues"] = err.issues
    return body


class DvlaGroup(click.Group):
    """Runs a command and turns SDK errors and Ctrl-C into one line on stderr and an exit status; with
    ``--json``, the error object on stdout too, so a script reading stdout learns why."""

    def invoke(self, ctx: click.Context) -> Any:
        state = ctx.ensure_object(State)  # before the command's context is made: it shares this one
        # the command's words (click 8.2 keeps the command's name in _protected_args, 8.1 in protected_args):
        # --json is looked for here, since a usage error may come before the option is parsed
        named = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        words = [*named, *ctx.args]
        state.as_json = "--json" in (words[:words.index("--")] if "--" in words else words)
        try:
            return super().invoke(ctx)
        except DvlaError as err:
            error(err.reason if isinstance(err, InvalidSpec) else str(err))  # the issues name their keys
            if state.as_json and not isinstance(err, JobFailed):  # a failed job: its record is printed
                print_json(error_object(err))
            ctx.exit(exits.exit_code(err))
        except click.ClickException as err:  # a usage error after --json was read: click prints it on stderr
            if state.as_json:
                print_json({"code": "usage", "field": getattr(getattr(err, "param", None), "name", "") or "",
                            "reason": err.format_message()})
            raise
        except KeyboardInterrupt:
            error("interrupted")
            if state.as_json:
                print_json({"code": "interrupted", "field": "", "reason": "interrupted"})
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
