#!/usr/bin/env bash
# Create .venv, install with the test extras, lint, and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k pipeline
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
make_venv test
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
.venv/bin/python -m pytest -q "$@"
