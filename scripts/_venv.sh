# Shared by demo.sh and test.sh: make .venv and install the project with the given extras.
# torch is pinned (==2.13.0) in pyproject.toml so pip takes the CPU build from local disk
# instead of pulling a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

ensure_system_packages() {
    # MuJoCo renders headless with OSMesa on machines without a GPU (libosmesa6); LIBERO's
    # robosuite imports OpenCV, which loads libGL and GLib (libgl1, libglib2.0-0).
    local libs missing=()
    libs="$(ldconfig -p)"  # read once: `ldconfig -p | grep -q` can fail on SIGPIPE under pipefail
    grep -q libOSMesa <<<"$libs" || missing+=(libosmesa6)
    grep -q "libGL.so.1 " <<<"$libs" || missing+=(libgl1)
    grep -q "libglib-2.0.so.0 " <<<"$libs" || missing+=(libglib2.0-0)
    [ ${#missing[@]} = 0 ] && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing ${missing[*]} (headless MuJoCo rendering, OpenCV)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing system libraries: install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
}

make_venv() {  # $1: extras, e.g. "daemon" or "test"
    ensure_system_packages
    if [ ! -x "$ROOT/.venv/bin/python" ]; then
        echo "== creating .venv"
        "$PY" -m venv "$ROOT/.venv"
    fi
    echo "== installing dvla[$1] into .venv (first time: a few minutes)"
    # (grep drops the warnings of pip set-ups whose local index lacks a package; errors still show)
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$1]" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    case "$1" in *libero*|*test*) install_libero ;; esac
}

install_libero() {
    # libero==0.1.1 declares its training stack (robomimic, transformers, wandb, thop), which pulls
    # a multi-GB CUDA torch; its simulator needs are the `libero` extra, so libero goes in alone.
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "libero==0.1.1" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
