"""The GPU inventory when NVML cannot reach a GPU (one that fell off the bus): at start, and in the
live sample.

No GPU here: the real pynvml runs with its library unloaded, so every query fails as NVML fails
(``NVMLError``); only the queries a test needs answer, with the recorded H100's values, and the
handle lookup loses GPU 1 as a real driver reports it.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pynvml

from dvlad.gpu.inventory import LIVE_FIELDS, Inventory, discover
from dvlad.testing import FIXTURE


def test_a_lost_gpu_is_reported_with_its_error_and_the_others_still_sampled(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlLib", None)  # nothing reaches a driver, even on a GPU machine
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})

    def handle(index: int) -> object:
        if index == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return object()

    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", handle)
    inventory = Inventory("nvml", {"devices": [{"index": 0}, {"index": 1}, {"index": 2}]})
    sampled = inventory.sample()
    assert [s["index"] for s in sampled] == [0, 1, 2]
    assert sampled[1] == {"index": 1, **dict.fromkeys(LIVE_FIELDS), "error": "NVMLError_GpuIsLost: GPU is lost"}
    assert all("error" not in s and set(s) == {"index", *LIVE_FIELDS} for s in (sampled[0], sampled[2]))


def test_a_gpu_lost_before_dvlad_starts_is_left_out_of_placement_not_a_failed_start(monkeypatch):
    """NVML at start: three GPUs, each answering as the recorded H100 does, but GPU 1 fell off the bus.
    dvlad must start, with GPUs 0 and 2 to place jobs on."""
    recorded = json.loads(FIXTURE.read_text())["devices"][0]
    monkeypatch.setattr(pynvml, "nvmlLib", None)  # what is not replayed below fails as NVML does
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.delenv("DVLAD_FAKE_TOPOLOGY", raising=False)
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 3)

    def handle(index: int) -> int:
        if index == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return index

    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", handle)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: recorded["name"])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: recorded["uuid"])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPciInfo", lambda h: SimpleNamespace(busId=recorded["pci_bus_id"]))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lambda h: SimpleNamespace(total=recorded["memory_total"]))
    inventory = discover()
    assert inventory.source == "nvml"
    assert [d["index"] for d in inventory.topology["devices"]] == [0, 2]
    assert inventory.topology["devices"][0] == {"index": 0, **{k: recorded[k] for k in (
        "name", "uuid", "pci_bus_id", "memory_total", "nvlinks")}}
    assert inventory.topology["pairs"] == [{"a": 0, "b": 2, "common_ancestor": None}]  # NVML did not say
