"""dvla.report (the panels of `dvla report` and scripts/plot_run.py) on metric rows as the engine writes
them: the GPU-busy panel appears only where rows carry it; a panel without data says so."""

from __future__ import annotations

import matplotlib.image

from dvla.report import PANELS, plot_runs


def _rows(n: int, gpu: bool) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"env_steps": 100.0 * (i + 1), "time_s": 2.0 * i, "env_steps_per_s": 50.0 + i, "episode_return": i / 3,
               "staleness_mean": 0.5, "staleness_max": 1.0, "staleness_hist": [3, 1]}
        for lane in ("sample", "infer", "learn", "distribute"):
            row[f"{lane}_busy"], row[f"{lane}_items_per_s"] = 0.1 * (i % 5), 10.0 * i
        if gpu:
            row["gpu_busy"] = 0.9
        rows.append(row)
    return rows


def test_gpu_panel_only_with_gpu_rows_and_several_runs_share_the_axes(tmp_path):
    plain = matplotlib.image.imread(plot_runs([("cpu", _rows(5, gpu=False))], tmp_path / "a.png"))
    with_gpu = matplotlib.image.imread(plot_runs([("a", _rows(5, gpu=True)), ("b", _rows(3, gpu=False))],
                                                 tmp_path / "sub" / "b.png", x="time_s", title="two runs"))
    assert with_gpu.shape[0] > plain.shape[0] and with_gpu.shape[1] == plain.shape[1]  # a fourth row of panels
    assert plain.std() > 0.05 and with_gpu.std() > 0.05
    assert [p.title for p in PANELS if p.optional] == ["GPU busy"]
    lanes = next(p for p in PANELS if p.title == "lane busy fraction").keys
    assert lanes == ("sample_busy", "infer_busy", "learn_busy", "distribute_busy")  # pipeline order, no GPU key
