"""Replication plans and job layouts: checked by hand on small machines, and for their invariants on
every recorded topology (tests/fixtures/gpu, ../shared/fixtures/gpu)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dvla.topology import islands
from dvlad.gpu.layout import DEFAULT_COSTS, LaneCosts, plan_layout, predicted_steps_per_s
from dvlad.gpu.replication import plan_replication
from dvlad.testing import FIXTURE

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "gpu").glob("*/topology.json")) + (
    [FIXTURE] if FIXTURE.exists() else [])


def machine(n: int, link) -> dict:
    """A topology record of ``n`` GPUs; ``link(a, b)`` is ``("NV", k)`` or an NVML PCIe level."""
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            kind = link(a, b)
            nvlink = isinstance(kind, tuple)
            pairs.append({"a": a, "b": b, "common_ancestor": 50 if nvlink else kind,
                          **({"nvlinks": kind[1]} if nvlink else {})})
    return {"devices": [{"index": i} for i in range(n)], "pairs": pairs}


HGX = machine(8, lambda a, b: ("NV", 18))
"""Eight GPUs on NVSwitches: one island."""
PCIE = machine(8, lambda a, b: 10 if a // 2 == b // 2 else 40 if a // 4 == b // 4 else 50)
"""Two sockets (SYS), two PCIe switches each (NODE between them), two GPUs per switch (PIX)."""
PAIRS = machine(4, lambda a, b: ("NV", 4) if a // 2 == b // 2 else 50)
"""Two NVLink-bridged pairs on two sockets."""


def check_plan(topology: dict | None, source: int, targets: list[int], fanout: int = 2):
    """The invariants of every plan; returns it."""
    plan = plan_replication(topology, source, targets, fanout)
    received = {source: 0}
    for copy in plan.copies:
        assert copy.src in received and received[copy.src] < copy.round, f"{copy} sends what it has not got"
        if copy.dst != copy.src:
            assert copy.dst not in received, f"{copy.dst} receives twice"
            received[copy.dst] = copy.round
    assert sorted(c.dst for c in plan.copies) == sorted(set(targets)), "every target exactly once"
    sent: dict[int, int] = {}
    for copy in plan.copies:
        if copy.dst != copy.src:
            sent[copy.src] = sent.get(copy.src, 0) + 1
    if topology is not None:  # one copy into each NVLink island that the source is not in
        for island in islands(topology):
            members = set(island) & {source, *targets}
            entering = [c for c in plan.copies if c.dst in members and c.src not in members]
            assert len(entering) == (0 if source in members or not members else 1), (island, entering)
    return plan


def test_a_switch_board_fans_out_as_a_binary_tree():
    plan = check_plan(HGX, 0, list(range(1, 8)))
    assert [(c.src, c.dst) for c in plan.copies] == [(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (3, 6), (2, 7)]
    assert {c.link for c in plan.copies} == {"NV18"}
    assert plan.depth == 4  # rounds: 0->1 | 0->2 1->3 | 1->4 2->5 3->6 | 2->7
    sent = [c.src for c in plan.copies]
    assert max(sent.count(s) for s in set(sent)) == 2  # no GPU's outbound bandwidth split three ways


def test_fanout_one_is_a_chain_and_a_large_fanout_a_binomial_tree():
    chain = check_plan(HGX, 0, list(range(1, 8)), fanout=1)
    assert [(c.src, c.dst) for c in chain.copies][:3] == [(0, 1), (1, 2), (2, 3)] and chain.depth == 7
    binomial = check_plan(HGX, 0, list(range(1, 8)), fanout=8)
    assert binomial.depth == math.ceil(math.log2(8))


def test_slow_links_carry_one_copy_then_each_level_fans_out():
    plan = check_plan(PCIE, 0, list(range(1, 8)))
    assert [(c.src, c.dst, c.link) for c in plan.copies] == [
        (0, 4, "SYS"),  # once across the sockets
        (0, 2, "NODE"), (4, 6, "NODE"),  # once to the other switch of each socket
        (0, 1, "PIX"), (2, 3, "PIX"), (4, 5, "PIX"), (6, 7, "PIX")]  # then inside each switch
    assert [c.link for c in plan.copies].count("SYS") == 1 and plan.depth == 3


def test_nvlink_pairs_take_one_pcie_copy_and_finish_over_nvlink():
    plan = check_plan(PAIRS, 0, [1, 2, 3])
    assert [(c.src, c.dst, c.link) for c in plan.copies] == [(0, 2, "SYS"), (0, 1, "NV4"), (2, 3, "NV4")]


def test_cpu_devices_and_a_replica_beside_the_learner():
    plan = check_plan(None, 0, [0, 1, 2, 3])
    assert {c.link for c in plan.copies} == {"CPU", "X"}
    local = next(c for c in plan.copies if c.link == "X")
    assert local.round > max(c.round for c in plan.copies if c.src == 0 and c.link == "CPU")  # after what leaves
    assert check_plan(None, 0, []).copies == () and plan_replication(None, 0, []).depth == 0


@pytest.mark.parametrize("path", FIXTURES, ids=[p.parent.name for p in FIXTURES])
def test_every_recorded_machine_gets_a_valid_plan_from_every_gpu(path):
    topology = json.loads(path.read_text())
    gpus = sorted(d["index"] for d in topology["devices"])
    for source in gpus:
        plan = check_plan(topology, source, [g for g in gpus if g != source])
        for island in islands(topology):  # logarithmic inside an island
            inside = [c for c in plan.copies if c.src in island and c.dst in island]
            assert len(inside) <= len(island) - 1
        assert plan.depth <= 2 * math.ceil(math.log2(len(gpus))) + 1 if len(gpus) > 1 else plan.depth == 0


def test_the_decoupled_layout_keeps_learners_together_and_feeds_the_rest():
    layout = plan_layout(range(4), PAIRS, learners=2, workers=4, groups=2, cores=32)
    assert layout.learner_devices == (0, 1) and layout.actor_devices == (2, 3)  # an NVLinked pair learns
    assert [(c.src, c.dst) for c in layout.replication.copies] == [(0, 2), (2, 3)]
    colocated = plan_layout(range(4), PAIRS, layout="colocated", workers=4, groups=2)
    assert [(c.src, c.dst) for c in colocated.replication.copies] == [(d, d) for d in range(4)]  # each to its own


def test_learner_count_follows_the_lane_costs():
    learn_bound = LaneCosts(sample_core_ms=1.0, infer_ms=1.0, learn_ms=3.0, source="test")
    # 4 devices: 3 learners and 1 actor give min(1000/1, 3·1000/3) = 1000 steps/s, the best split
    assert len(plan_layout(range(4), HGX, workers=6, groups=4, costs=learn_bound, cores=64).learner_devices) == 3
    infer_bound = LaneCosts(sample_core_ms=1.0, infer_ms=3.0, learn_ms=1.0, source="test")
    assert len(plan_layout(range(4), HGX, workers=6, groups=4, costs=infer_bound, cores=64).learner_devices) == 1
    assert predicted_steps_per_s("decoupled", 3, 1, learn_bound, cores=64) == pytest.approx(1000.0)
    assert predicted_steps_per_s("colocated", 4, 4, learn_bound, cores=64) == pytest.approx(1000.0)  # 4 / 4 ms
    slow_sim = LaneCosts(sample_core_ms=4.0, infer_ms=1.0, learn_ms=3.0, source="test")
    assert predicted_steps_per_s("decoupled", 3, 1, slow_sim, cores=2) == pytest.approx(500.0)  # the cores bound
    assert DEFAULT_COSTS.infer_ms < DEFAULT_COSTS.learn_ms


def test_layouts_refuse_what_cannot_run():
    with pytest.raises(ValueError, match="at least 2 devices"):
        plan_layout([0], None, layout="decoupled", workers=2, groups=2)
    with pytest.raises(ValueError, match="leaves none of the job's 2 devices"):
        plan_layout(range(2), None, learners=2, workers=2, groups=2)
    with pytest.raises(ValueError, match="learner rank on every one"):
        plan_layout(range(2), None, layout="colocated", learners=1, workers=2, groups=2)
    with pytest.raises(ValueError, match="must divide among the 2 actor replicas"):
        plan_layout(range(2), None, layout="colocated", workers=3, groups=2)
    # 4 devices, 3 workers: only 1 learner and 3 replicas divide the workers; 1 group of 1 replica feeds 3 ranks? no
    assert plan_layout(range(4), None, workers=3, groups=1).learner_devices == (0,)
    with pytest.raises(ValueError, match="no split"):
        plan_layout(range(3), None, learners=2, workers=2, groups=1)  # 1 replica × 1 group cannot feed 2 ranks


def test_the_planner_script_prints_what_the_readme_promises():
    """``scripts/plan_job.py`` as the README runs it: one JSON line with the split, the plan and the prediction."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "scripts/plan_job.py", "examples/gpu_bench.toml", "--topology",
                          "tests/fixtures/gpu/nvlink-pairs-x4/topology.json", "--gpus", "4", "--cores", "16", "--json"],
                         cwd=root, capture_output=True, text=True, timeout=120, check=True)
    plan = json.loads(out.stdout.strip().splitlines()[-1])
    assert plan["layout"] == "decoupled" and len(plan["learner_gpus"]) + len(plan["actor_gpus"]) == 4
    assert {c["dst"] for c in plan["replication"]} == set(plan["actor_gpus"])
    assert all(c["link"] in ("NV4", "SYS") for c in plan["replication"]) and plan["predicted_steps_per_s"] > 0
    refused = subprocess.run([sys.executable, "scripts/plan_job.py", "examples/gpu_bench.toml", "--topology",
                              "tests/fixtures/gpu/nvlink-pairs-x4/topology.json", "--gpus", "5"],
                             cwd=root, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "the topology has 4" in refused.stderr
