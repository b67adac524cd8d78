"""``dvla validate``: check job files offline, with every problem's key, line and column.

Why offline: the checks are :mod:`dvla.admission`'s, the very function the daemon runs at submit and the
job runner at its start, so a laptop without a daemon (or torch) gives the answer the daemon would, and CI
can gate job files. Only whether the job fits a node (its GPUs, CPU slots, memory) is the daemon's to say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dvla.admission import admit_file
from dvla.cli import exits, output
from dvla.cli.main import json_option
from dvla.spec import SpecError, SpecIssue


def check(path: Path) -> list[SpecIssue]:
    """The problems of one job file (none: it would run): the checks ``dvla submit`` and dvlad make
    (:mod:`dvla.admission`), whether it fits a node aside."""
    try:
        admit_file(path)
    except SpecError as err:
        return err.issues
    return []


def _issue_json(issue: SpecIssue) -> dict[str, Any]:
    return {"key": issue.key, "reason": issue.reason, "line": issue.line, "column": issue.column}


@click.command(epilog=f"""\b
Examples:
  dvla validate job.toml
  dvla validate examples/*.toml
  dvla validate job.toml --json | jq '.[0].issues[] | "\\(.line):\\(.column) \\(.key)"'

\b
Each problem is printed as FILE:LINE:COLUMN: KEY: REASON (as compilers do, so editors jump to it).
Exit status {exits.OK} when every file is valid, {exits.USAGE} when any has a problem. No daemon is needed.""")
@click.argument("job_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
def validate(job_files: tuple[Path, ...], as_json: bool) -> None:
    """Check job files offline (no daemon).

    JOB_FILES are checked against the job schema (docs/jobs.md) exactly as the daemon would."""
    results = [(path, check(path)) for path in job_files]
    if as_json:
        output.print_json([{"file": str(path), "ok": not issues, "issues": [_issue_json(i) for i in issues]}
                           for path, issues in results])
    else:
        for path, issues in results:
            if not issues:
                click.echo(f"{path}: ok")
            for issue in issues:
                click.echo(str(issue))
    bad = sum(1 for _, issues in results if issues)
    if bad:
        if not as_json:
            problems = sum(len(issues) for _, issues in results)
            output.error(f"{problems} problem(s) in {bad} of {len(results)} file(s)")
        raise SystemExit(exits.USAGE)


COMMANDS = (validate,)
