"""Where a job's metrics go: JSON lines (everything), CSV (the headline columns) and a
TensorBoard event log (what users open first).

Each sink appends and flushes per row, so a crash loses at most the row being written. The CSV's
columns and the TensorBoard tags come from the metrics' declarations (:mod:`dvla.metric_names`).
TensorBoard gets a success rate only once enough episodes have ended (``SUCCESS_MIN_EPISODES``),
as every display of it; the JSON lines and the CSV keep every row's raw value.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from dvla import metric_names as m


class MetricsSink:
    """A run directory's three metric files, appended one row at a time."""

    def __init__(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = output_dir / "metrics.jsonl"
        self.csv_path = output_dir / "metrics.csv"
        self._jsonl = self.jsonl_path.open("a")
        new_csv = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.DictWriter(self._csv_file, m.CSV_COLUMNS, extrasaction="ignore")
        if new_csv:
            self._csv.writeheader()
        self._tb = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, values: dict[str, float], staleness_hist: list[int] | None = None) -> None:
        row = m.as_written(values)
        if staleness_hist is not None:
            row[m.STALENESS_HIST] = staleness_hist
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._csv.writerow(row)  # the headline columns alone (extrasaction="ignore")
        self._csv_file.flush()
        step = int(values[m.ENV_STEPS])
        for key, value in values.items():
            if key == m.SUCCESS_RATE and m.success_rate_of(values) is None:
                continue  # a window of the first few (short, successful) episodes: 1.00 before any learning
            if m.METRICS[key].scalar:
                self._tb.add_scalar(m.METRICS[key].tensorboard_tag, value, step)
        self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()
        self._tb.close()


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]
