"""The EGL device of the job's GPU, matched by UUID (dvlad/envs/egl_device.py).

This machine has no NVIDIA driver, so the driver's answers are replayed in the forms NVML and
EGL give them, for a two-GPU host (UUIDs made up) where EGL lists the devices in another order
than NVML: the case an index gets wrong. The real query ran on the GPU machine (docs/libero.md).
"""

from __future__ import annotations

import os

import pytest

from dvlad.envs import egl_device
from dvlad.envs.egl_device import EglDeviceError, choose_egl_device, egl_index_for, parse_uuid

NVML_UUIDS = ["GPU-5f1c7a52-3c4e-8b1a-0d9e-6a7b2c3d4e5f", "GPU-a0b1c2d3-e4f5-0617-2839-4a5b6c7d8e9f"]
"""`nvidia-smi -L` of the host, in NVML's (and the daemon's CUDA_VISIBLE_DEVICES') order."""
EGL_ORDER = [None, parse_uuid(NVML_UUIDS[1]), parse_uuid(NVML_UUIDS[0])]
"""eglQueryDevicesEXT with EGL_DEVICE_UUID_EXT there: Mesa's software device first, then the GPUs
in reverse NVML order."""


def test_parse_uuid_reads_nvml_and_mig_forms_and_refuses_others():
    assert parse_uuid(NVML_UUIDS[0]) == bytes.fromhex("5f1c7a523c4e8b1a0d9e6a7b2c3d4e5f")
    assert parse_uuid("MIG-" + NVML_UUIDS[0][4:]) == parse_uuid(NVML_UUIDS[0])
    with pytest.raises(ValueError, match="not a GPU UUID"):
        parse_uuid("1")


def test_egl_index_follows_the_uuid_not_the_index():
    assert egl_index_for(parse_uuid(NVML_UUIDS[0]), EGL_ORDER) == 2
    assert egl_index_for(parse_uuid(NVML_UUIDS[1]), EGL_ORDER) == 1
    with pytest.raises(EglDeviceError, match="no EGL device has the job's GPU UUID 00000000"):
        egl_index_for(bytes(16), EGL_ORDER)


@pytest.fixture
def two_gpu_host(monkeypatch):
    """That host's driver: NVML by index, EGL's device list."""
    monkeypatch.delenv(egl_device.EGL_DEVICE_ID_ENV, raising=False)
    monkeypatch.setattr(egl_device, "egl_device_uuids", lambda: list(EGL_ORDER))
    monkeypatch.setattr(egl_device, "_nvml_uuid", lambda index: NVML_UUIDS[index])
    return monkeypatch


@pytest.mark.parametrize(("visible", "expected"), [("1", 1), ("0,1", 2), (NVML_UUIDS[0], 2), (None, 2)])
def test_choose_sets_mujoco_egl_device_id_for_the_jobs_first_gpu(two_gpu_host, visible, expected):
    if visible is None:
        two_gpu_host.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        two_gpu_host.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert choose_egl_device() == expected
    assert os.environ[egl_device.EGL_DEVICE_ID_ENV] == str(expected)


def test_choose_keeps_the_users_choice(two_gpu_host):
    two_gpu_host.setenv(egl_device.EGL_DEVICE_ID_ENV, "0")
    assert choose_egl_device() == 0


def test_choose_leaves_it_to_mujoco_where_the_driver_cannot_say(monkeypatch):
    """No libEGL with device queries (this machine): nothing is set, nothing fails."""
    monkeypatch.delenv(egl_device.EGL_DEVICE_ID_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", NVML_UUIDS[0])
    monkeypatch.setattr(egl_device, "egl_device_uuids", lambda: (_ for _ in ()).throw(EglDeviceError("no")))
    assert choose_egl_device() is None
    assert egl_device.EGL_DEVICE_ID_ENV not in os.environ
