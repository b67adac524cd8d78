"""Fuzz dvlad's HTTP API from its own OpenAPI document with schemathesis, at the size of a campaign.

Starts a real ``dvlad`` (from this venv) in a temporary directory and fuzzes it over TCP
(127.0.0.1, a bearer token; the peer routes signed with the cluster secret of a cluster of one), with
``limits.default.running_jobs = 0`` so accepted jobs stay queued;
generates about ``--cases`` requests, valid and invalid, over every operation the document declares
(each accepted submit is also read back as JSON and as msgpack); prints the cases, the statuses, the
5xx count, the error-level log lines of the daemon and the time. Exits 1 on any 5xx, unanswered
request or error-level log line. The CI size of the same is ``tests/test_api_fuzz.py``.

    python scripts/fuzz_api.py --cases 10000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dvlad import apifuzz
from dvlad.testing import Dvlad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="about this many generated requests (default 10000)")
    parser.add_argument("--json", action="store_true", help="print one JSON line of the figures last")
    args = parser.parse_args()
    daemon = Dvlad(apifuzz.CONFIG)
    try:
        tally = apifuzz.fuzz(apifuzz.serve(daemon), apifuzz.TOKEN, args.cases)
        log = [json.loads(line) for line in daemon.stderr.read_text().splitlines()]
    finally:
        daemon.close()
    loud = [line for line in log if line["level"] in ("error", "critical")]
    print(f"cases: {tally.cases} (+ {tally.read_backs} read-backs of accepted jobs) in {tally.seconds:.1f} s "
          f"({(tally.cases + tally.read_backs) / tally.seconds:.0f} requests/s)")
    print("statuses: " + ", ".join(f"{status}: {n}" for status, n in sorted(tally.statuses.items())))
    print(f"5xx or unanswered: {tally.server_errors}; daemon log lines: {len(log)}, at error level: {len(loud)}")
    for failure in tally.failures[:20]:
        print("  " + failure)
    if args.json:
        print(json.dumps({"cases": tally.cases, "read_backs": tally.read_backs, "seconds": round(tally.seconds, 1),
                          "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
                          "server_errors": tally.server_errors, "log_lines": len(log), "error_log_lines": len(loud),
                          "cpus": os.cpu_count(), "python": platform.python_version()}))
    return 1 if tally.server_errors or loud else 0


if __name__ == "__main__":
    sys.exit(main())
