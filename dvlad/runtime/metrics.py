"""Where a job's metrics go: JSON lines (everything), CSV (the headline columns) and a
TensorBoard event log (what users open first).

Each sink appends and flushes per row, so a crash loses at most the row being written.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

CSV_COLUMNS = (
    "version", "env_steps", "time_s", "env_steps_per_s", "success_rate", "episode_return", "episode_length",
    "episodes", "loss", "pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "staleness_mean",
    "staleness_max", "sample_busy", "infer_busy", "learn_busy", "distribute_busy", "publish_ms",
    "queue_depth", "weight_wait_s", "dropped_episodes", "replaced_workers",
)


class MetricsSink:
    def __init__(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = output_dir / "metrics.jsonl"
        self.csv_path = output_dir / "metrics.csv"
        self._jsonl = self.jsonl_path.open("a")
        new_csv = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.DictWriter(self._csv_file, CSV_COLUMNS, extrasaction="ignore")
        if new_csv:
            self._csv.writeheader()
        self._tb = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, values: dict[str, float], staleness_hist: list[int] | None = None) -> None:
        row = dict(values)
        if staleness_hist is not None:
            row["staleness_hist"] = staleness_hist
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._csv.writerow(values)
        self._csv_file.flush()
        step = int(values.get("env_steps", 0))
        for key, value in values.items():
            self._tb.add_scalar(_tb_tag(key), value, step)
        self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()
        self._tb.close()


def _tb_tag(key: str) -> str:
    """Group TensorBoard charts: lanes/…, losses/…, episodes/…, pipeline/…"""
    if key.endswith(("_busy", "_items_per_s")):
        return f"lanes/{key}"
    if key in {"loss", "pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "ratio_mean", "ratio_max",
               "truncated_frac", "grad_norm"}:
        return f"losses/{key}"
    if key in {"success_rate", "episode_return", "episode_length", "episodes"}:
        return f"episodes/{key}"
    return f"pipeline/{key}"


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]
