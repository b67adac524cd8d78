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


class SharedGLContext:
    """A reference to this process's one OpenGL context for MuJoCo, with the interface robosuite's
    render contexts call (``make_current``, ``free``).

    Why one context for all of a worker's envs: a MuJoCo ``mjrContext`` holds only the names of GL
    objects created in whichever context was current, so several envs' ``mjrContext``s can live in
    one GL context, each drawing into its own offscreen framebuffer. robosuite instead makes a GL
    context per simulator: a worker with 4 envs switched between 4 (on a datacenter GPU, with 64
    EGL contexts in 16 processes, the switching adds to rendering's cost) and kept 4 default
    framebuffers. The first env's own context becomes the shared one; it is destroyed when the last
    reference is freed (robosuite frees its context when an env closes). Env workers render from
    one thread, as GL contexts require.

    Each env's reference also binds that env's offscreen framebuffer when it makes the context
    current: MuJoCo draws into whichever framebuffer is bound, and with one context for several
    ``mjrContext``s that is the last one bound, not necessarily this env's."""

    _context: object | None = None
    _refs = 0

    def __init__(self, renderer: object) -> None:
        self.renderer = renderer
        """The env's robosuite render context, whose ``con`` (its ``mjrContext``) is bound."""
        self._freed = False
        SharedGLContext._refs += 1

    @classmethod
    def adopt(cls, renderer: object) -> SharedGLContext:
        """A reference to the shared context for ``renderer`` (a robosuite render context): its own
        GL context becomes the shared one if there is none yet, otherwise it is destroyed (the caller
        has freed what MuJoCo made in it)."""
        own = renderer.gl_ctx  # type: ignore[attr-defined]
        if cls._context is None:
            cls._context = own
        else:
            own.free()
        return cls(renderer)

    @property
    def context(self) -> object:
        """The underlying GL context (robosuite's class for the backend)."""
        assert SharedGLContext._context is not None, "the shared GL context was freed"
        return SharedGLContext._context

    def make_current(self) -> None:
        """The shared context current, with this env's offscreen framebuffer bound."""
        self.context.make_current()  # type: ignore[attr-defined]
        con = getattr(self.renderer, "con", None)  # None while robosuite remakes it
        if con is not None:
            import mujoco

            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, con)

    def free(self) -> None:
        """Drop this reference; the last one destroys the context."""
        if self._freed:
            return
        self._freed = True
        SharedGLContext._refs -= 1
        if SharedGLContext._refs == 0 and SharedGLContext._context is not None:
            context, SharedGLContext._context = SharedGLContext._context, None
            context.free()  # type: ignore[attr-defined]
