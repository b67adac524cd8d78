"""The GPU inventory when NVML cannot answer: a GPU that fell off the bus (at start, and in the live
sample), and a field the GPU or its driver does not support.

No GPU here: the real pynvml runs with its library unloaded, so every query fails as NVML fails
(``NVMLError``); only the queries discovery makes are replayed, from the recorded H100 (``FIXTURE``),
and the handle lookup loses the GPUs a test says are lost, as a real driver reports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from dvlad.gpu.inventory import LIVE_FIELDS, Inventory, discover
from dvlad.testing import FIXTURE

STATIC = ("name", "uuid", "pci_bus_id", "memory_total", "nvlinks")
"""What discovery records of each GPU besides its index."""


@pytest.fixture
def recorded() -> dict[str, Any]:
    """The recorded H100's device record (fields NVML refused on it are ``{"error": ...}``)."""
    return json.loads(FIXTURE.read_text())["devices"][0]


@pytest.fixture
def replay(monkeypatch) -> Callable[..., None]:
    """``replay(count, lost, device)``: NVML on ``count`` GPUs, of which those in ``lost`` cannot be reached
    at all; with ``device``, each other GPU's static fields are its recorded ones, a field recorded as
    refused raising the error NVML gave."""
    monkeypatch.setattr(pynvml, "nvmlLib", None)  # what is not replayed below fails as NVML does
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.delenv("DVLAD_FAKE_TOPOLOGY", raising=False)

    def answer(device: dict[str, Any], key: str, shape: Callable[[Any], Any] = lambda v: v) -> Callable[[int], Any]:
        def query(handle: int) -> Any:
            value = device[key]
            if isinstance(value, dict) and "error" in value:  # "NVMLError_NotSupported: Not Supported"
                raise getattr(pynvml, value["error"].split(":")[0])()
            return shape(value)
        return query

    def start(count: int = 1, lost: Collection[int] = (), device: dict[str, Any] | None = None) -> None:
        def handle(index: int) -> int:
            if index in lost:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            return index

        monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: count)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", handle)
        if device is None:
            return
        for name, query in (("nvmlDeviceGetName", answer(device, "name")),
                            ("nvmlDeviceGetUUID", answer(device, "uuid")),
                            ("nvmlDeviceGetPciInfo", answer(device, "pci_bus_id", lambda v: SimpleNamespace(busId=v))),
                            ("nvmlDeviceGetMemoryInfo", answer(device, "memory_total",
                                                               lambda v: SimpleNamespace(total=v)))):
            monkeypatch.setattr(pynvml, name, query)

    return start


def test_a_lost_gpu_is_reported_with_its_error_and_the_others_still_sampled(replay):
    replay(count=3, lost={1})
    inventory = Inventory("nvml", {"devices": [{"index": 0}, {"index": 1}, {"index": 2}]})
    sampled = inventory.sample()
    assert [s["index"] for s in sampled] == [0, 1, 2]
    assert sampled[1] == {"index": 1, **dict.fromkeys(LIVE_FIELDS), "error": "NVMLError_GpuIsLost: GPU is lost"}
    assert all("error" not in s and set(s) == {"index", *LIVE_FIELDS} for s in (sampled[0], sampled[2]))


def test_a_gpu_lost_before_dvlad_starts_is_left_out_of_placement_not_a_failed_start(replay, recorded):
    """NVML at start: three GPUs, each answering as the recorded H100 does, but GPU 1 fell off the bus.
    dvlad must start, with GPUs 0 and 2 to place jobs on."""
    replay(count=3, lost={1}, device=recorded)
    inventory = discover()
    assert inventory.source == "nvml"
    assert [d["index"] for d in inventory.topology["devices"]] == [0, 2]
    assert inventory.topology["devices"][0] == {"index": 0, **{k: recorded[k] for k in STATIC}}
    assert inventory.topology["pairs"] == [{"a": 0, "b": 2, "common_ancestor": None}]  # NVML did not say


def test_a_static_field_nvml_does_not_support_is_none_and_the_gpu_is_still_placed(replay, recorded):
    """The recorded H100 behind a driver that refuses its UUID and memory size with the very error this
    machine's NVML gave for its NUMA node (NotSupported): dvlad starts with the GPU, those two fields
    None, the others as recorded."""
    refused = recorded["numa_node"]
    assert refused == {"error": "NVMLError_NotSupported: Not Supported"}
    replay(device={**recorded, "uuid": refused, "memory_total": refused})
    device, = discover().topology["devices"]
    assert device == {"index": 0, **{k: recorded[k] for k in STATIC}, "uuid": None, "memory_total": None}
