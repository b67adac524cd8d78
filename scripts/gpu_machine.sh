#!/usr/bin/env bash
# Run a command on the lent GPU machine (see docs/benchmarks.md), which has torch but no package
# registry: unpack the GL loaders carried in .gl/ (EGL rendering for MuJoCo), install the wheels
# carried in .whl/ (mujoco and the few pure-Python needs the image lacks), unpack the LIBERO
# bundles carried in .libero/ (scripts/libero_bundle.py: libero, robosuite, bddl and the assets a
# suite opens) into /tmp/libero-site, last on PYTHONPATH so the image's packages win, then run "$@"
# with the repository importable.
#
#   bash scripts/gpu_machine.sh python3 -m pytest -m gpu tests/
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".gl/*.deb" >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$nvidia_egl" ] && [ ! -f /usr/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES="$nvidia_egl"
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
libero_site=
if compgen -G ".libero/*.tar.xz" >/dev/null; then
    libero_site=/tmp/libero-site
    mkdir -p "$libero_site"
    for f in .libero/*.tar.xz; do tar -xJf "$f" -C "$libero_site"; done
fi
export PYTHONPATH="$PWD:$PWD/sdk${PYTHONPATH:+:$PYTHONPATH}${libero_site:+:$libero_site}"
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONUNBUFFERED=1
exec "$@"
