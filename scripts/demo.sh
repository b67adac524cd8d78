#!/usr/bin/env bash
# Create .venv, install, and train tiny-vla on the embedded `reach` task with PPO,
# showing progress; ends with the success rate and where the report is.
# Extra arguments go to the job runner (e.g. --output-dir runs/mine).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
make_venv daemon
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
OUT="runs/demo-$(date +%Y%m%d-%H%M%S)"
echo "== training tiny-vla on reach (examples/reach_ppo.toml) -> $OUT"
.venv/bin/python -m dvlad.runtime.job examples/reach_ppo.toml --output-dir "$OUT" "$@"
.venv/bin/python scripts/plot_run.py "$OUT" --out "$OUT/report.png"
echo "report: $OUT/report.png  (metrics: $OUT/metrics.csv, TensorBoard: $OUT/tensorboard)"
