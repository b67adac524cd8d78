"""Pick MuJoCo's OpenGL backend for headless env workers.

Why this exists: env workers run without a display, so MuJoCo's default GLFW
backend cannot open a context. On a machine with an NVIDIA GPU, EGL renders
headless on the GPU; on a CPU-only machine, OSMesa renders in software (it needs
the Debian package ``libosmesa6``). MuJoCo reads ``MUJOCO_GL`` and PyOpenGL reads
``PYOPENGL_PLATFORM`` once, when they are first imported, so this must run in a
process before ``import mujoco``; afterwards it cannot change the backend. With EGL the device
is the job's own GPU, matched by UUID (:mod:`dvlad.envs.egl_device`), not MuJoCo's index guess.
"""

from __future__ import annotations

import os

NVIDIA_DEVICE = "/dev/nvidia0"


def configure_mujoco_gl() -> str:
    """Choose the backend (keeping a ``MUJOCO_GL`` the user set) and return it.

    ``egl`` when an NVIDIA GPU device node exists, else ``osmesa``. ``PYOPENGL_PLATFORM``
    is set to match unless already set, because PyOpenGL otherwise guesses GLX and fails. With
    ``egl``, ``MUJOCO_EGL_DEVICE_ID`` is set to the EGL device of the job's GPU.
    """
    backend = os.environ.get("MUJOCO_GL")
    if not backend:
        backend = "egl" if os.path.exists(NVIDIA_DEVICE) else "osmesa"
        os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    if backend == "egl":
        from dvlad.envs.egl_device import choose_egl_device

        choose_egl_device()
    return backend
