"""scripts/chaos.py at its smallest size (one round of every fault through a real dvlad): every fault
ends as expected, no acknowledged job is lost and no /dev/shm segment is left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_one_round_of_every_fault_ends_as_expected_and_leaks_nothing():
    proc = subprocess.run([sys.executable, "scripts/chaos.py", "--rounds", "1", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["faults"]) == 6
    for fault in result["faults"]:
        assert (fault["rounds"], fault["as_expected"], fault["shm_leaked"]) == (1, 1, 0), fault
    daemon = result["faults"][0]
    assert daemon["acknowledged"] > 0 and daemon["lost"] == 0 and daemon["in_store"] >= daemon["acknowledged"]
