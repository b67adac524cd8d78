"""dvla.topology on records of real multi-GPU servers (tests/fixtures/gpu), each transcribed from a published
``nvidia-smi topo -m``: the link matrix reproduces the published GPU x GPU entries, the NVLink islands are the
ones read off the output by hand, and each GPU's NUMA node and CPU affinity are its row's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dvla.topology import islands, link_matrix

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
ISLANDS = {
    "hgx-h100-x8": [list(range(8))],  # NV18 between every pair: the NVSwitches join all eight
    "pcie-x8-2switch": [[i] for i in range(8)],  # PCIe only: PIX under a switch, SYS across sockets
    "pcie-consumer-x4": [[i] for i in range(4)],  # PCIe only: PHB within a socket, SYS across
    "nvlink-pairs-x4": [[0, 1], [2, 3]],  # two NV4 bridges
    "nvlink-pairs-x8-a6000": [[0, 1], [2, 3], [4, 5], [6, 7]],  # four NV4 bridges
}
ROW = re.compile(r"^GPU(\d+)\s")


def published(path: Path) -> tuple[list[str], dict[int, list[str]]]:
    """The header's fields and each GPU row's fields from a published matrix. The header is the line just
    above the first GPU row (indented, where rows start at the margin); '#' lines are the citation."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    first = next(i for i, line in enumerate(lines) if ROW.match(line))
    rows = {int(ROW.match(line).group(1)): line.split() for line in lines if ROW.match(line)}
    return lines[first - 1].split(), rows


def cpu_words(cpulist: str, count: int) -> list[int]:
    """'0-55,112-167' as NVML's CPU affinity words (64 CPUs to a word)."""
    words = [0] * count
    for part in cpulist.split(","):
        low, _, high = part.partition("-")
        for cpu in range(int(low), int(high or low) + 1):
            words[cpu // 64] |= 1 << (cpu % 64)
    return words


def load(name: str) -> tuple[dict, list[str], dict[int, list[str]]]:
    header, rows = published(FIXTURES / name / "nvidia-smi-topo-m.txt")
    return json.loads((FIXTURES / name / "topology.json").read_text()), header, rows


def test_every_fixture_has_its_expected_islands_and_a_cited_source():
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(ISLANDS)
    for name in ISLANDS:
        record = json.loads((FIXTURES / name / "topology.json").read_text())
        citation = (FIXTURES / name / "nvidia-smi-topo-m.txt").read_text().splitlines()[0]
        url = re.search(r"https://\S+?(?=[)\s,]|$)", record["source"]).group(0)
        assert citation.startswith("# Source:") and url in citation and record["host"]


@pytest.mark.parametrize("name", sorted(ISLANDS))
def test_link_matrix_reproduces_the_published_gpu_entries(name):
    record, header, rows = load(name)
    n = len(rows)
    assert header[:n] == [f"GPU{i}" for i in range(n)] and sorted(rows) == list(range(n))
    indices, matrix = link_matrix(record)
    assert indices == list(range(n))
    assert matrix == [rows[i][1 : 1 + n] for i in range(n)]


@pytest.mark.parametrize("name", sorted(ISLANDS))
def test_islands_are_the_nvlink_groups_of_the_published_output(name):
    record, _, _ = load(name)
    assert islands(record) == ISLANDS[name]


@pytest.mark.parametrize("name", sorted(ISLANDS))
def test_each_gpu_has_its_rows_numa_node_and_cpu_affinity(name):
    record, header, rows = load(name)
    n = len(rows)
    others = header[n : header.index("CPU")]  # NIC columns between the GPUs and "CPU Affinity"
    for device in record["devices"]:
        fields = rows[device["index"]][1 + n + len(others) :]
        words = device["cpu_affinity_words"]
        assert words == cpu_words(fields[0], len(words))
        assert device["numa_node"] == int(fields[1])
