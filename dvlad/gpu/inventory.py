"""The GPUs of this machine and their live utilisation.

Real NVML (nvidia-ml-py) where a driver is present. On a machine without GPUs, ``DVLAD_FAKE_TOPOLOGY``
(or the config's ``node.fake_topology``) names a ``topology.json`` recorded from a real machine with
NVML (see ``shared/fixtures/gpu``), so placement, ``/v1/topology`` and ``/v1/nodes`` are exercised on
real layouts; a replayed machine has no live utilisation to report.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("dvlad")
FAKE_ENV = "DVLAD_FAKE_TOPOLOGY"
SAMPLE_TTL_S = 0.5
LIVE_FIELDS = ("utilization", "memory_used", "memory_total", "temperature", "power_draw", "power_limit")
"""What :meth:`Inventory.sample` reports per GPU besides its index (None where unknown)."""


@dataclass
class Inventory:
    source: str
    """"nvml", "fixture:<path>" or "none" (no driver, no fixture: a CPU-only node)."""
    topology: dict[str, Any]
    """NVML's view: ``devices`` (index, name, uuid, pci_bus_id, memory_total, nvlinks: each active link's
    ``link``, ``remote_pci_bus_id`` and ``remote_type`` gpu/switch; a field NVML did not answer is None)
    and ``pairs``."""
    _sampled: tuple[float, list[dict[str, Any]]] | None = field(default=None, repr=False)

    @property
    def gpu_indices(self) -> list[int]:
        return [d["index"] for d in self.topology.get("devices", [])]

    def sample(self) -> list[dict[str, Any]]:
        """Live stats per GPU (only real NVML has them), at most one NVML pass per ``SAMPLE_TTL_S``.

        Why cached: every ``dvla top`` asks twice a second, and ten of them must cost NVML no more
        than one. A field the GPU does not support is None, never an exception; a GPU NVML cannot
        reach at all (fallen off the bus) has every field None and ``error`` saying why."""
        if self.source != "nvml":
            return []
        now = time.monotonic()
        if self._sampled is None or now - self._sampled[0] >= SAMPLE_TTL_S:
            self._sampled = (now, [_nvml_sample(index) for index in self.gpu_indices])
        return self._sampled[1]


def _nvml_field(query: Callable[[], Any]) -> Any:
    """``query()``, or None where this GPU or driver does not answer it (as nvitop's ``nvmlQuery``).

    Every field of a GPU, static or live, is read through here: a GPU or driver that lacks one (NVLink
    on a PCIe card, memory info on some virtual GPUs) gives that field None, never a failed start nor a
    failed sample."""
    import pynvml

    try:
        return query()
    except pynvml.NVMLError:
        return None


def _nvml_sample(index: int) -> dict[str, Any]:
    import pynvml

    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as exc:  # lost or gone: one GPU's stats, not the whole answer, say so
        return {"index": index, **dict.fromkeys(LIVE_FIELDS), "error": f"{type(exc).__name__}: {exc}"}
    util = _nvml_field(lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
    mem = _nvml_field(lambda: pynvml.nvmlDeviceGetMemoryInfo(h))
    power = _nvml_field(lambda: pynvml.nvmlDeviceGetPowerUsage(h))
    limit = _nvml_field(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h))
    return {"index": index, "utilization": util,
            "memory_used": None if mem is None else mem.used, "memory_total": None if mem is None else mem.total,
            "temperature": _nvml_field(lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
            "power_draw": None if power is None else power / 1000,  # NVML says mW; watts here
            "power_limit": None if limit is None else limit / 1000}


def _nvlinks(handle: Any) -> list[dict[str, Any]]:
    """The GPU's active NVLinks, each with what its far end is: another GPU (by PCI bus id) or an
    NVSwitch (HGX boards: every GPU reaches every other through the switches). Empty on PCIe-only GPUs,
    where NVML answers NotSupported."""
    import pynvml

    kinds = {pynvml.NVML_NVLINK_DEVICE_TYPE_GPU: "gpu", pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH: "switch"}
    links = []
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        if _nvml_field(lambda link=link: pynvml.nvmlDeviceGetNvLinkState(handle, link)) != pynvml.NVML_FEATURE_ENABLED:
            continue
        remote = _nvml_field(lambda link=link: pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
        kind = _nvml_field(lambda link=link: pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link))
        links.append({"link": link, "remote_pci_bus_id": remote, "remote_type": kinds.get(kind, "unknown")})
    return links


def _nvml_topology() -> dict[str, Any] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library or no driver: this node has no NVIDIA GPU we can use
        return None
    devices = [d for d in map(_nvml_device, range(_nvml_field(pynvml.nvmlDeviceGetCount) or 0)) if d is not None]
    pairs = []
    for a, b in itertools.combinations([d["index"] for d in devices], 2):
        level = _nvml_field(lambda a=a, b=b: pynvml.nvmlDeviceGetTopologyCommonAncestor(
            pynvml.nvmlDeviceGetHandleByIndex(a), pynvml.nvmlDeviceGetHandleByIndex(b)))
        pairs.append({"a": a, "b": b, "common_ancestor": level if isinstance(level, int) else None})
    return {"host": os.uname().nodename, "devices": devices, "pairs": pairs}


def _nvml_device(index: int) -> dict[str, Any] | None:
    """GPU ``index``'s static record (a field NVML does not answer is None), or None when NVML cannot
    reach the GPU at all (fallen off the bus, a driver error): that GPU is left out of placement and
    logged, instead of a daemon that cannot start."""
    import pynvml

    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as exc:
        log.warning("GPU %d left out of placement: NVML cannot reach it (%s)", index, exc)
        return None
    return {"index": index, "name": _nvml_field(lambda: pynvml.nvmlDeviceGetName(h)),
            "uuid": _nvml_field(lambda: pynvml.nvmlDeviceGetUUID(h)),
            "pci_bus_id": _nvml_field(lambda: pynvml.nvmlDeviceGetPciInfo(h).busId),
            "memory_total": _nvml_field(lambda: pynvml.nvmlDeviceGetMemoryInfo(h).total), "nvlinks": _nvlinks(h)}


def discover(fake_topology: str = "") -> Inventory:
    """The fixture named by ``$DVLAD_FAKE_TOPOLOGY`` or ``fake_topology`` if any, else NVML, else none."""
    fake = os.environ.get(FAKE_ENV) or fake_topology
    if fake:
        return Inventory(f"fixture:{fake}", json.loads(Path(fake).read_text()))
    topology = _nvml_topology()
    if topology is None:
        return Inventory("none", {"host": os.uname().nodename, "devices": [], "pairs": []})
    return Inventory("nvml", topology)
