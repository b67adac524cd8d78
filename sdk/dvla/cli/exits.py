"""The exit statuses scripts can rely on, and which error gives which.

Why few and coarse: a script wants to branch on "the job failed" versus "I called it wrong" versus
"no daemon"; the reason itself is printed on stderr for people.
"""

from __future__ import annotations

from dvla.errors import DaemonUnavailable, DvlaError, InvalidSpec

OK = 0
FAILED = 1
"""The job failed or was cancelled (``--follow``), or the daemon refused the request (no such job, not
yours, the job's state forbids it, the job is bigger than the whole node), or the job has no metric
rows or checkpoint yet; the reason is on stderr."""
USAGE = 2
"""Bad arguments (click's usage errors), an invalid job file, ``dvla validate`` found problems, a bad
``~/.config/dvla/config.toml`` or a bad daemon address."""
UNAVAILABLE = 3
"""No daemon answered where the client looked."""
INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, as shells do); a followed job keeps running."""

TABLE = f"""\b
Exit status:
  {OK}    success
  {FAILED}    the job failed or was cancelled (--follow), or the daemon refused
       (no such job, not your job, the job already ended, the job is bigger
       than the node), or no metrics or checkpoint yet; reason on stderr
  {USAGE}    usage error: bad arguments or daemon address, an invalid job file, validate
       found problems
  {UNAVAILABLE}    the daemon is unreachable
  {INTERRUPTED}  interrupted (Ctrl-C); a followed job keeps running"""
"""The table every ``--help`` of the top level shows (``\\b``: click keeps its line breaks)."""


def exit_code(error: DvlaError) -> int:
    """The status for an SDK error (see the module constants)."""
    if isinstance(error, DaemonUnavailable) or error.code == "transport":  # gone, or went away mid-request
        return UNAVAILABLE
    if isinstance(error, InvalidSpec) or error.code == "bad_config":
        return USAGE
    return FAILED
