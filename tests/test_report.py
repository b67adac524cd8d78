"""dvla.report (the panels of `dvla report` and scripts/plot_run.py) on metric rows as the engine writes
them: the optional panels appear only where rows carry their figures; a panel without data says so;
each panel holds one unit; rates and fractions start at 0; the learn and distribute lanes are rates
over several rows; the success rate waits for enough episodes; compared runs keep one colour each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from dvla import metric_names as m
from dvla.report import PANELS, SMOOTH_ROWS, figure, plot_runs

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, gpu: bool = False, critic: bool = False) -> list[dict]:
    """Rows of a learner that takes 2 s per update of 100 samples (50 samples/s, 30 updates/min), whose
    rows count each update's items or not by turns, and ends 3 episodes per update."""
    rows = []
    for i in range(n):
        row = {"version": float(i + 1), "env_steps": 100.0 * (i + 1), "time_s": 2.0 * (i + 1),
               "env_steps_per_s": 500.0 + i % 3, "episode_return": i / 3, "episodes": 3 * i,
               "success_rate": 0.5, "samples": 100.0, "learn_s": 1.9, "publish_ms": 2.0,
               "staleness_mean": 0.5, "staleness_max": 1.0, "staleness_hist": [3, 1], "loss": 0.3 - i / 100,
               "pg_loss": 0.1, "entropy": 5.2, "approx_kl": 0.004, "clipfrac": 0.05}
        for lane in ("sample", "infer", "learn", "distribute"):
            row[f"{lane}_busy"], row[f"{lane}_items_per_s"] = 0.1 * (i % 5), 10.0 * i
        row["learn_items_per_s"] = 100.0 if i % 2 else 0.0  # the saw-tooth
        row["distribute_items_per_s"] = 1.0 if i % 2 else 0.0
        if gpu:
            row["gpu_busy"] = 0.995 + 0.004 * (i % 2)
        if critic:
            row["v_loss"], row["explained_variance"] = 0.2, 0.1 * (i % 10)
        rows.append(row)
    return rows


def _axes(fig: plt.Figure) -> dict[str, plt.Axes]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def _panel(fig: plt.Figure, start: str) -> plt.Axes:
    return next(ax for title, ax in _axes(fig).items() if title.startswith(start))


def test_gpu_panel_only_with_gpu_rows_and_several_runs_share_the_axes(tmp_path):
    plain = matplotlib.image.imread(plot_runs([("cpu", _rows(5))], tmp_path / "a.png"))
    with_gpu = matplotlib.image.imread(plot_runs([("a", _rows(5, gpu=True, critic=True)), ("b", _rows(3))],
                                                 tmp_path / "sub" / "b.png", x="time_s", title="two runs"))
    assert with_gpu.shape[0] > plain.shape[0] and with_gpu.shape[1] == plain.shape[1]  # another row of panels
    assert plain.std() > 0.05 and with_gpu.std() > 0.05
    assert [p.title for p in PANELS if p.optional] == ["GPU busy fraction", "explained variance (PPO)"]
    lanes = next(p for p in PANELS if p.title == "lane busy fraction").curves
    assert [c.key for c in lanes] == ["sample_busy", "infer_busy", "learn_busy", "distribute_busy"]  # pipeline order


def test_learn_and_distribute_are_rates_over_rows_not_the_rows_saw_tooth():
    fig = figure([("run", _rows(40))])
    learn = _panel(fig, "learn lane: samples / s").lines[0].get_ydata()
    updates = _panel(fig, "updates (= weight versions) / min").lines[0].get_ydata()
    assert np.allclose(learn, 50.0) and np.allclose(updates, 30.0)  # the rows' own figures: 0, 100, 0, 100, ...
    assert len(learn) == 39  # every row but the first (nothing before it to measure from)
    assert _panel(fig, "time per update (s)").lines[0].get_ydata()[0] == 1.9
    assert SMOOTH_ROWS > 1
    plt.close(fig)


def test_rates_times_and_fractions_start_at_zero():
    fig = figure([("run", _rows(20, gpu=True))])
    gpu = _panel(fig, "GPU busy fraction")
    assert gpu.get_ylim()[0] == 0.0 and gpu.get_ylim()[1] >= 1.0  # 0.995..0.999 is "always busy", not noise
    for title in ("env steps / s", "learn lane", "updates", "time per update", "time per publish", "staleness",
                  "infer lane"):
        assert _panel(fig, title).get_ylim()[0] == 0.0, title  # 500..502 env steps/s is flat, not a zigzag
    for title in ("lane busy fraction", "clip fraction", "success rate"):
        assert _panel(fig, title).get_ylim() == pytest.approx((0.0, 1.02)), title
    plt.close(fig)


def test_the_losses_entropy_kl_clip_fraction_and_explained_variance_are_drawn():
    fig = figure([("run", _rows(10, critic=True))])
    loss = _panel(fig, "losses")
    assert sorted(line.get_label() for line in loss.lines) == ["loss", "pg_loss", "v_loss"]
    for title in ("entropy (nats)", "approx KL (nats)", "clip fraction", "explained variance (PPO)"):
        assert len(_panel(fig, title).lines) == 1, title
    plt.close(fig)
    grpo = figure([("run", _rows(10))])  # no critic: no explained-variance panel
    assert not any(t.startswith("explained variance") for t in _axes(grpo))
    assert len(_panel(grpo, "losses").lines) == 2
    plt.close(grpo)


def test_each_panel_holds_one_unit():
    units = {p.title: p.unit for p in PANELS}  # a panel of mixed units raises
    assert units["env steps / s"] == "env steps/s"
    assert units["updates (= weight versions) / min (over 10 rows)"] == "versions/min"
    assert units["learn lane: samples / s (over 10 rows)"] == "samples/s"
    assert all(curve.key != m.LANE_ITEMS_PER_S["distribute"] for p in PANELS for curve in p.curves)


def test_no_success_point_before_enough_episodes_have_ended():
    rows = _rows(20)  # 3 episodes per row: 20 have ended from the 7th row on
    fig = figure([("run", rows)])
    xs = _panel(fig, "success rate").lines[0].get_xdata()
    first = next(r for r in rows if r["episodes"] >= m.SUCCESS_MIN_EPISODES)
    assert xs[0] == first["env_steps"] and len(xs) == sum(r["episodes"] >= m.SUCCESS_MIN_EPISODES for r in rows)
    plt.close(fig)


def test_compared_runs_keep_one_colour_each_in_every_panel():
    fig = figure([("a", _rows(12, critic=True)), ("b", _rows(8, critic=True))])
    for title, ax in _axes(fig).items():
        colours = {line.get_label().split()[0]: set() for line in ax.lines}
        for line in ax.lines:
            colours[line.get_label().split()[0]].add(line.get_color())
        assert all(len(c) == 1 for c in colours.values()), title  # a run: one colour
        assert colours["a"] != colours["b"], title
        styles = {line.get_linestyle() for line in ax.lines if line.get_label().startswith("a ")}
        assert len(styles) == len([line for line in ax.lines if line.get_label().startswith("a ")]), title
    plt.close(fig)


def test_plot_run_script_compares_run_directories(tmp_path):
    for name, n in (("a", 12), ("b", 8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(n)))
    out = tmp_path / "both.png"
    subprocess.run([sys.executable, str(ROOT / "scripts/plot_run.py"), str(tmp_path / "a"), str(tmp_path / "b"),
                    "--labels", "A", "B", "--out", str(out)], check=True, capture_output=True, text=True)
    image = matplotlib.image.imread(out)
    blue, orange = np.array([0.12, 0.47, 0.71]), np.array([1.0, 0.5, 0.05])  # matplotlib's C0 and C1
    pixels = image[..., :3].reshape(-1, 3)
    assert (np.abs(pixels - blue).max(axis=1) < 0.05).sum() > 500  # run A's colour
    assert (np.abs(pixels - orange).max(axis=1) < 0.05).sum() > 500  # run B's colour
