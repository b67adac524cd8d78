#!/usr/bin/env bash
# Create .venv, install, and train tiny-vla on the embedded `reach` task with PPO until its
# success target holds (examples/reach_ppo.toml: 0.95 for 20 updates; minutes on 2 cores),
# showing progress; ends with the success rate and where the report is. Ctrl-C stops the
# job cleanly (checkpoint, summary) and the report is still drawn from what it did.
# Extra arguments go to the job runner (e.g. --output-dir runs/mine).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
make_venv daemon
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
OUT="runs/demo-$(date +%Y%m%d-%H%M%S)"
echo "== training tiny-vla on reach (examples/reach_ppo.toml) -> $OUT"
status=0
.venv/bin/python -m dvlad.runtime.job examples/reach_ppo.toml --output-dir "$OUT" "$@" || status=$?
[ "$status" = 0 ] || [ "$status" = 3 ] || exit "$status"  # 3: stopped on request (Ctrl-C), checkpointed
.venv/bin/python scripts/plot_run.py "$OUT" --out "$OUT/report.png"
echo "report: $OUT/report.png  (metrics: $OUT/metrics.csv, TensorBoard: $OUT/tensorboard)"
exit "$status"
