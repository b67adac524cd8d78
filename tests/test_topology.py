"""The GPU link matrix and NVLink islands (dvla.topology) on recorded machines and on NVML-shaped
layouts of multi-GPU hosts (NVLink quads, a PCIe-only box)."""

from __future__ import annotations

import json

import pytest

from dvla.topology import islands, link_matrix, nvlink_counts
from dvlad.testing import FIXTURE

RECORDED = sorted(FIXTURE.parent.parent.glob("*/topology.json"))


@pytest.mark.skipif(not RECORDED, reason=f"no recorded topologies next to {FIXTURE}")
@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.parent.name)
def test_recorded_machines_have_one_island_per_nvlink_group(path):
    topology = json.loads(path.read_text())
    indices, matrix = link_matrix(topology)
    assert indices == sorted(d["index"] for d in topology["devices"])
    assert [row[i] for i, row in enumerate(matrix)] == ["X"] * len(indices)
    found = islands(topology)
    assert sorted(i for group in found for i in group) == indices  # every GPU in exactly one island
    if path.parent.name == "h100-x1":  # one H100, no NVLink peers
        assert (matrix, found) == ([["X"]], [[0]])


def _host(n: int, nvlinks: dict[int, list[int]], level: int = 50) -> dict:
    """An NVML-shaped topology: ``nvlinks[i]`` lists the peer of each of GPU i's active links."""
    bus = [f"00000000:{0x10 + i:02X}:00.0" for i in range(n)]
    devices = [{"index": i, "pci_bus_id": bus[i],
                "nvlinks": [{"link": k, "remote_pci_bus_id": bus[p].lower()} for k, p in enumerate(nvlinks.get(i, []))]}
               for i in range(n)]
    pairs = [{"a": a, "b": b, "common_ancestor": level} for a in range(n) for b in range(a + 1, n)]
    return {"devices": devices, "pairs": pairs}


def test_two_nvlink_quads_are_two_islands_and_pcie_links_keep_their_level():
    quads = {i: [p for p in range(4 * (i // 4), 4 * (i // 4) + 4) if p != i] * 2 for i in range(8)}  # NV2 in a quad
    topology = _host(8, quads)
    indices, matrix = link_matrix(topology)
    assert indices == list(range(8)) and islands(topology) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert matrix[0][:5] == ["X", "NV2", "NV2", "NV2", "SYS"] and matrix[5][4] == "NV2"
    assert nvlink_counts(topology)[frozenset((6, 7))] == 2  # each link counted once, not from both ends


def test_a_chain_of_links_is_one_island_and_a_pcie_box_has_none():
    chain = _host(3, {0: [1], 1: [0, 2], 2: [1]})
    assert islands(chain) == [[0, 1, 2]] and link_matrix(chain)[1][0] == ["X", "NV1", "SYS"]
    pcie = _host(4, {}, level=20)
    assert islands(pcie) == [[0], [1], [2], [3]]
    assert set(link_matrix(pcie)[1][0][1:]) == {"PXB"}
    refused = {"devices": [{"index": 0}, {"index": 1}], "pairs": [{"a": 0, "b": 1, "common_ancestor": {"error": "x"}}]}
    assert link_matrix(refused)[1] == [["X", "?"], ["?", "X"]] and islands({"devices": [], "pairs": []}) == []
    unanswered = _host(2, {0: [1]})  # NVML answered neither GPU 1's bus id nor the far end of GPU 0's link
    unanswered["devices"][1]["pci_bus_id"] = unanswered["devices"][0]["nvlinks"][0]["remote_pci_bus_id"] = None
    assert islands(unanswered) == [[0], [1]] and nvlink_counts(unanswered) == {}


def test_gpus_on_nvswitches_are_one_island_with_their_link_count():
    hgx = _host(4, {})
    for device in hgx["devices"]:
        device["nvlinks"] = [{"link": k, "remote_pci_bus_id": "00000000:C0:00.0", "remote_type": "switch"}
                             for k in range(18)]
    hgx["devices"][3]["nvlinks"] = []  # a GPU off the switches keeps its PCIe links
    _, matrix = link_matrix(hgx)
    assert islands(hgx) == [[0, 1, 2], [3]] and matrix[0] == ["X", "NV18", "NV18", "SYS"]


def test_placement_prefers_nvlink_pairs_then_the_nearest_pcie_path():
    from dvlad.gpu.links import link_score
    from dvlad.sched.policy import pick_gpus

    nvlinked = _host(4, {0: [2, 2], 2: [0, 0], 1: [3], 3: [1]})  # NV2 between 0 and 2, NV1 between 1 and 3
    score = link_score(nvlinked)
    assert score(0, 2) > score(3, 1) > score(0, 1) == 0.0  # NVLink above any PCIe path, SYS lowest
    assert pick_gpus(range(4), 2, score) == (0, 2) and pick_gpus([0, 1, 3], 2, score) == (1, 3)
    pcie = _host(3, {})
    pcie["pairs"] = [{"a": 0, "b": 1, "common_ancestor": 50}, {"a": 0, "b": 2, "common_ancestor": 10},
                     {"a": 1, "b": 2, "common_ancestor": {"error": "NotSupported"}}]
    assert pick_gpus(range(3), 2, link_score(pcie)) == (0, 2)  # PIX beats SYS and an unknown level
