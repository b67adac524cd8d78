"""``python -m dvla.top [--host H] [--token T] [--refresh S]``: the monitor without the ``dvla`` CLI.

Why it exists beside ``dvla top``: tests and the CPU benchmark start monitors as plain processes, and
it connects exactly as the SDK does (:mod:`dvla.config`: arguments, ``$DVLA_HOST``, the config file,
the local socket).
"""

from __future__ import annotations

import argparse
import sys

from dvla.client import Client
from dvla.errors import DvlaError
from dvla.top.app import run_top
from dvla.top.poller import MIN_REFRESH_S


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dvla.top", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="daemon address: /path/dvlad.sock, unix://..., host:port, http(s)://...")
    parser.add_argument("--token", help="token for a daemon reached over TCP")
    parser.add_argument("--refresh", type=float, default=0.5, help="seconds between polls (default 0.5)")
    args = parser.parse_args(argv)
    if not args.refresh >= MIN_REFRESH_S:  # also refuses nan
        parser.error(f"--refresh must be at least {MIN_REFRESH_S} seconds")
    try:
        client = Client(args.host, args.token)
    except DvlaError as exc:
        print(f"dvla top: {exc}", file=sys.stderr)
        return 2
    with client:
        run_top(client, args.refresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
