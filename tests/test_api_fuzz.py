"""The API fuzzed from its own OpenAPI document (schemathesis), at a small size: a real dvlad over TCP.

``scripts/fuzz_api.py --cases 10000`` is the same at the size of a campaign, run by hand.
"""

from __future__ import annotations

import json

import pytest

from dvlad import apifuzz

pytestmark = pytest.mark.slow  # a real dvlad and a few hundred requests

CASES = 300


def test_a_few_hundred_generated_requests_get_no_5xx_and_flood_no_log(dvlads):
    daemon = dvlads(apifuzz.CONFIG, start=False)
    tally = apifuzz.fuzz(apifuzz.serve(daemon), apifuzz.TOKEN, CASES)
    assert tally.cases >= CASES and tally.read_backs, (tally.cases, tally.read_backs)
    assert tally.server_errors == 0, "\n".join(tally.failures[:10])
    assert set(tally.statuses) & {200, 201} and set(tally.statuses) & {400, 404}, tally.statuses  # both kinds ran
    assert 401 not in tally.statuses, tally.statuses  # user routes with the token, peer routes signed: all got in
    lines = [json.loads(line) for line in daemon.stderr.read_text().splitlines()]
    assert not [line for line in lines if line["level"] in ("error", "critical")], lines[:3]
