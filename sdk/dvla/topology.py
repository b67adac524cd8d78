"""Reading the daemon's GPU topology (``client.topology()``): the link between each pair of GPUs and the
NVLink islands.

Why on the client side and pure: ``dvla topo`` prints what the daemon recorded from NVML without asking
it to interpret anything, and the same functions run on recorded machines (``shared/fixtures/gpu``) in
tests. The shape is ``dvlad.gpu.inventory``'s: ``devices`` (``index``, ``pci_bus_id``, ``nvlinks``) and
``pairs`` (``a``, ``b``, ``common_ancestor``: NVML's topology level, or ``{"error"}`` where NVML refused).
A device's ``nvlinks`` lists its active NVLinks, each naming the peer it reaches by ``remote_pci_bus_id``
(or ``remote_index``), or ``remote_type = "switch"`` for an NVSwitch (HGX boards: the GPUs on switches
all reach each other, ``NV#`` with the smaller of their link counts, as ``nvidia-smi topo -m`` shows);
a pair may also carry its own ``nvlinks`` count.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Any

PCIE_LEVELS = {0: "INT", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
"""NVML's common-ancestor levels as ``nvidia-smi topo -m`` names them (INT: the same board)."""
LEGEND = {
    "X": "the GPU itself",
    "NV#": "a bonded set of # NVLinks",
    "INT": "on the same board (internal)",
    "PIX": "at most one PCIe bridge",
    "PXB": "several PCIe bridges, not the host bridge",
    "PHB": "a PCIe host bridge (the CPU)",
    "NODE": "PCIe host bridges within one NUMA node",
    "SYS": "PCIe and the interconnect between NUMA nodes",
    "?": "unknown (NVML did not say)",
}


def _bus(bus_id: Any) -> str:
    """A PCI bus id in one spelling: NVML writes ``00000000:00:06.0`` in one call and lower case in another."""
    return str(bus_id).strip().upper()


def nvlink_counts(topology: dict[str, Any]) -> dict[frozenset[int], int]:
    """NVLinks between each pair of GPUs that has any (each link counted once, whichever end listed it)."""
    devices = topology.get("devices", [])
    # a bus id NVML did not answer (None) names no GPU: two unknowns must not read as one another's peer
    by_bus = {_bus(d["pci_bus_id"]): d["index"] for d in devices if d.get("pci_bus_id")}
    seen: dict[int, Counter[int]] = {}
    switched: dict[int, int] = {}  # GPU -> its links to NVSwitches
    for device in devices:
        ends: Counter[int] = Counter()
        for link in device.get("nvlinks") or []:
            if not isinstance(link, dict):
                continue
            if link.get("remote_type") == "switch":
                switched[device["index"]] = switched.get(device["index"], 0) + 1
                continue
            peer = link.get("remote_index", by_bus.get(_bus(link.get("remote_pci_bus_id", ""))))
            if isinstance(peer, int) and peer != device["index"]:
                ends[peer] += 1
        seen[device["index"]] = ends
    counts: dict[frozenset[int], int] = {}
    for a, ends in seen.items():
        for b, n in ends.items():
            pair = frozenset((a, b))
            counts[pair] = max(counts.get(pair, 0), n)
    for a, b in combinations(sorted(switched), 2):
        pair = frozenset((a, b))
        counts[pair] = max(counts.get(pair, 0), min(switched[a], switched[b]))
    for pair in topology.get("pairs", []):
        n = pair.get("nvlinks")
        if isinstance(n, int) and n > 0:
            key = frozenset((pair["a"], pair["b"]))
            counts[key] = max(counts.get(key, 0), n)
    return counts


def link_matrix(topology: dict[str, Any]) -> tuple[list[int], list[list[str]]]:
    """The GPU indices and, row by row, the link from each to each: ``X``, ``NV#`` or a PCIe level."""
    indices = sorted(d["index"] for d in topology.get("devices", []))
    nvlinks = nvlink_counts(topology)
    pcie = {frozenset((p["a"], p["b"])): p.get("common_ancestor") for p in topology.get("pairs", [])}
    rows = []
    for a in indices:
        row = []
        for b in indices:
            pair = frozenset((a, b))
            if a == b:
                row.append("X")
            elif pair in nvlinks:
                row.append(f"NV{nvlinks[pair]}")
            else:
                level = pcie.get(pair)
                row.append(PCIE_LEVELS.get(level, "?") if isinstance(level, int) else "?")
        rows.append(row)
    return indices, rows


def islands(topology: dict[str, Any]) -> list[list[int]]:
    """Groups of GPUs joined by NVLink (directly or through each other), sorted; a GPU without NVLink
    is an island of its own. Placement prefers to keep a job's GPUs inside one."""
    parent = {d["index"]: d["index"] for d in topology.get("devices", [])}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in nvlink_counts(topology):
        a, b = sorted(pair)
        if a in parent and b in parent:
            parent[root(b)] = root(a)
    groups: dict[int, list[int]] = {}
    for i in sorted(parent):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())
