# Shared by demo.sh and test.sh: make .venv and install the project with the given extras.
# torch is pinned (==2.13.0) in pyproject.toml so pip takes the CPU build from local disk
# instead of pulling a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

ensure_system_packages() {
    # MuJoCo renders headless with OSMesa on machines without a GPU (Debian: libosmesa6).
    if ! ldconfig -p | grep -q libOSMesa; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "== installing libosmesa6 (headless MuJoCo rendering)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null
        else
            echo "libOSMesa is missing: install it (Debian/Ubuntu: sudo apt-get install libosmesa6)" >&2
            exit 1
        fi
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
}
