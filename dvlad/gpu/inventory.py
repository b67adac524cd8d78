"""The GPUs of this machine and their live utilisation.

Real NVML (nvidia-ml-py) where a driver is present. On a machine without GPUs, ``DVLAD_FAKE_TOPOLOGY``
(or the config's ``node.fake_topology``) names a ``topology.json`` recorded from a real machine with
NVML (see ``shared/fixtures/gpu``), so placement, ``/v1/topology`` and ``/v1/nodes`` are exercised on
real layouts; a replayed machine has no live utilisation to report.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAKE_ENV = "DVLAD_FAKE_TOPOLOGY"


@dataclass
class Inventory:
    source: str
    """"nvml", "fixture:<path>" or "none" (no driver, no fixture: a CPU-only node)."""
    topology: dict[str, Any]
    """NVML's view: ``devices`` (index, name, uuid, pci_bus_id, memory_total, nvlinks) and ``pairs``."""

    @property
    def gpu_indices(self) -> list[int]:
        return [d["index"] for d in self.topology.get("devices", [])]

    def sample(self) -> list[dict[str, Any]]:
        """Utilisation (%) and memory used/total (bytes) per GPU; only real NVML has them."""
        if self.source != "nvml":
            return []
        import pynvml

        out = []
        for index in self.gpu_indices:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append({"index": index, "util": util.gpu, "memory_used": mem.used, "memory_total": mem.total})
        return out


def _nvml_topology() -> dict[str, Any] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library or no driver: this node has no NVIDIA GPU we can use
        return None
    devices = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        devices.append({"index": index, "name": pynvml.nvmlDeviceGetName(h), "uuid": pynvml.nvmlDeviceGetUUID(h),
                        "pci_bus_id": pynvml.nvmlDeviceGetPciInfo(h).busId,
                        "memory_total": pynvml.nvmlDeviceGetMemoryInfo(h).total, "nvlinks": []})
    pairs = []
    for a, b in itertools.combinations(range(len(devices)), 2):
        ha, hb = pynvml.nvmlDeviceGetHandleByIndex(a), pynvml.nvmlDeviceGetHandleByIndex(b)
        pairs.append({"a": a, "b": b, "common_ancestor": pynvml.nvmlDeviceGetTopologyCommonAncestor(ha, hb)})
    return {"host": os.uname().nodename, "devices": devices, "pairs": pairs}


def discover(fake_topology: str = "") -> Inventory:
    """The fixture named by ``$DVLAD_FAKE_TOPOLOGY`` or ``fake_topology`` if any, else NVML, else none."""
    fake = os.environ.get(FAKE_ENV) or fake_topology
    if fake:
        return Inventory(f"fixture:{fake}", json.loads(Path(fake).read_text()))
    topology = _nvml_topology()
    if topology is None:
        return Inventory("none", {"host": os.uname().nodename, "devices": [], "pairs": []})
    return Inventory("nvml", topology)
