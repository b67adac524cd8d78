"""Which EGL device renders on the job's own GPU, matched by UUID.

Why this exists: MuJoCo's and robosuite's EGL backends pick a device by *index* from
``MUJOCO_EGL_DEVICE_ID`` (robosuite falls back to ``int(CUDA_VISIBLE_DEVICES)``). EGL enumerates
every GPU of the host in its own order, which need not be NVML's or CUDA's, and an index
computed under ``CUDA_VISIBLE_DEVICES`` means another GPU altogether. A job's env workers would
then render on a GPU the job does not own, sharing it with another job. Each NVIDIA EGL device
reports the same 16-byte UUID as NVML and CUDA (``EGL_EXT_device_persistent_id``), so the job's
GPU is found by its UUID and the matching EGL index is handed to MuJoCo.

The pure part (:func:`parse_uuid`, :func:`egl_index_for`) is separate from the part that asks
the driver (:func:`job_gpu_uuid`, :func:`egl_device_uuids`), so the matching is tested anywhere.
"""

from __future__ import annotations

import ctypes
import os
import uuid as uuidlib

EGL_DEVICE_ID_ENV = "MUJOCO_EGL_DEVICE_ID"
EGL_DEVICE_UUID_EXT = 0x335C  # EGL_EXT_device_persistent_id


class EglDeviceError(RuntimeError):
    """The job's GPU has no EGL device (or the driver cannot say which one it is)."""


def parse_uuid(text: str) -> bytes:
    """The 16 bytes of a GPU UUID as NVML and ``nvidia-smi -L`` write it (``GPU-xxxxxxxx-…``)."""
    body = text.strip()
    for prefix in ("GPU-", "MIG-"):
        if body.startswith(prefix):
            body = body[len(prefix):]
    try:
        return uuidlib.UUID(body).bytes
    except ValueError:
        raise ValueError(f"not a GPU UUID: {text!r}") from None


def egl_index_for(gpu_uuid: bytes, egl_uuids: list[bytes | None]) -> int:
    """The index of the EGL device whose UUID is ``gpu_uuid``; EglDeviceError naming them if none."""
    for index, candidate in enumerate(egl_uuids):
        if candidate == gpu_uuid:
            return index
    listed = ", ".join("?" if u is None else str(uuidlib.UUID(bytes=u)) for u in egl_uuids) or "none"
    raise EglDeviceError(f"no EGL device has the job's GPU UUID {uuidlib.UUID(bytes=gpu_uuid)} "
                         f"(EGL devices: {listed})")


def job_gpu_uuid() -> bytes:
    """The UUID of the job's GPU: the first of ``CUDA_VISIBLE_DEVICES`` (a UUID, or an NVML index
    as the daemon writes it), else NVML's GPU 0. Asks NVML, not CUDA: a worker keeps no CUDA context."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    return parse_uuid(_nvml_uuid(int(first)) if first.isdigit() else first)


def _nvml_uuid(index: int) -> str:
    """NVML's UUID string of its GPU ``index``."""
    import pynvml

    pynvml.nvmlInit()
    try:
        value = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
    finally:
        pynvml.nvmlShutdown()
    return value.decode() if isinstance(value, bytes) else value


def egl_device_uuids() -> list[bytes | None]:
    """Each EGL device's UUID in EGL's order (None for a device without one, e.g. Mesa's software one)."""
    egl = ctypes.CDLL("libEGL.so.1")
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]

    def proc(name: str, *argtypes: type) -> ctypes._CFuncPtr:
        address = egl.eglGetProcAddress(name.encode())
        if not address:
            raise EglDeviceError(f"libEGL lacks {name}")
        return ctypes.CFUNCTYPE(ctypes.c_uint, *argtypes)(address)

    query_devices = proc("eglQueryDevicesEXT", ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                         ctypes.POINTER(ctypes.c_int))
    query_binary = proc("eglQueryDeviceBinaryEXT", ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                        ctypes.c_void_p, ctypes.POINTER(ctypes.c_int))
    count = ctypes.c_int()
    devices = (ctypes.c_void_p * 32)()
    if not query_devices(32, devices, ctypes.byref(count)):
        raise EglDeviceError("eglQueryDevicesEXT failed")
    uuids: list[bytes | None] = []
    for device in devices[:count.value]:
        buffer, size = ctypes.create_string_buffer(16), ctypes.c_int()
        ok = query_binary(device, EGL_DEVICE_UUID_EXT, 16, buffer, ctypes.byref(size))
        uuids.append(buffer.raw[:16] if ok and size.value == 16 else None)
    return uuids


def choose_egl_device() -> int | None:
    """Set ``MUJOCO_EGL_DEVICE_ID`` to the job's GPU's EGL index (keeping one the user set).

    Returns the index, or None where it cannot be known (no NVML, no EGL UUID query): MuJoCo's own
    choice then stands, as before. A GPU with no matching EGL device is an error, not a guess."""
    if os.environ.get(EGL_DEVICE_ID_ENV):
        return int(os.environ[EGL_DEVICE_ID_ENV])
    try:
        gpu, egl = job_gpu_uuid(), egl_device_uuids()
    except (OSError, ImportError, EglDeviceError):
        return None
    except Exception as e:  # pynvml's NVMLError (no driver) is not importable where pynvml is absent
        if type(e).__name__.startswith("NVMLError"):
            return None
        raise
    index = egl_index_for(gpu, egl)
    os.environ[EGL_DEVICE_ID_ENV] = str(index)
    return index
