"""The GPU inventory's live sample when NVML cannot reach a GPU (one that fell off the bus).

No GPU here: the real pynvml runs with its library unloaded, so every query fails as NVML fails
(``NVMLError``), and only the handle lookup is replaced, to lose GPU 1 as a real driver reports it.
"""

from __future__ import annotations

import pynvml

from dvlad.gpu.inventory import LIVE_FIELDS, Inventory


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
