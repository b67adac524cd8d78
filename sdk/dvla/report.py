"""A job's metric rows as one PNG of curves: learning (success rate, return), throughput (env steps/s,
the learner's samples/s and updates/min, time per update and per publish), each lane's busy share, GPU
busy where the rows have it, staleness, and the update's losses (loss, entropy, approx KL, clip
fraction, explained variance for PPO).

Why here, in the client: ``dvla report`` draws rows fetched over HTTP (``client.metrics``) on a laptop
without torch, and ``scripts/plot_run.py`` draws the same panels from run directories on disk; both call
:func:`plot_runs`. Matplotlib only (the Agg backend: no display needed).

How the panels are kept honest: each panel holds one unit (steps/s and versions/min never share an
axis); rates, times and fractions start their axis at 0 (fractions span 0–1), so a GPU 99.5–99.9% busy
does not read as noise spikes; the learn and distribute lanes, which finish one update at a time, are
drawn as rates over :data:`SMOOTH_ROWS` rows from the rows' versions and samples (:mod:`dvla.rates`),
not as the per-row figures that saw-tooth between 0 and twice the rate; the success rate has no point
before :data:`~dvla.metric_names.SUCCESS_MIN_EPISODES` episodes have ended. Runs compared in one report
each keep one colour in every panel; a panel's curves are told apart by line style.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display needed
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dvla import metric_names as m
from dvla import rates

Rows = list[dict[str, Any]]
Values = Callable[[Rows], list[float | None]]

SMOOTH_ROWS = 10
"""Rows the learn and distribute lanes' rates span (each row is ``train.log_every`` updates)."""
STYLES = ("-", "--", ":", "-.")
"""Line styles of a panel's curves, in order (when several runs share a panel, colour says the run)."""


def key_values(key: str) -> Values:
    """The rows' own figure of ``key``."""
    return lambda rows: [float(r[key]) if isinstance(r.get(key), int | float) else None for r in rows]


def smoothed(figure: Callable[[Rows, int, int], float | None], scale: float = 1.0) -> Values:
    def values(rows: Rows) -> list[float | None]:
        return [None if v is None else v * scale for v in rates.rolling(rows, figure, SMOOTH_ROWS)]
    return values


@dataclass(frozen=True)
class Curve:
    """One line of a panel: its legend label, its unit, and how its values come from the rows."""

    label: str
    unit: str
    values: Values
    key: str = ""
    """The metric it draws as written, or ``""`` for a figure derived from several."""


def metric(key: str, label: str = "", unit: str = "") -> Curve:
    """The metric ``key`` as the rows hold it, in its declared unit (or ``unit``, more precise)."""
    return Curve(label or key, unit or m.METRICS[key].unit, key_values(key), key)


@dataclass(frozen=True)
class Panel:
    title: str
    curves: tuple[Curve, ...]
    axis: str = "auto"
    """``fraction`` (0–1, higher if a value is), ``zero`` (from 0: rates, times, counts) or ``auto``."""
    optional: bool = False
    """Left out when the rows hold none of its figures (GPU busy: only jobs on a GPU report it;
    explained variance: only PPO's)."""

    @property
    def unit(self) -> str:
        units = {c.unit for c in self.curves}
        assert len(units) == 1, f"panel {self.title!r} mixes units {units}"
        return units.pop()


ENV_STEPS_PER_S_UNIT = m.METRICS[m.ENV_STEPS_PER_S].unit
SUCCESS = Curve(m.SUCCESS_RATE, m.METRICS[m.SUCCESS_RATE].unit,
                lambda rows: [m.success_rate_of(r) for r in rows], m.SUCCESS_RATE)

PANELS: tuple[Panel, ...] = (
    Panel(f"success rate (last 100 episodes, from {m.SUCCESS_MIN_EPISODES} ended)", (SUCCESS,), "fraction"),
    Panel("episode return", (metric(m.EPISODE_RETURN),)),
    Panel("env steps / s", (metric(m.ENV_STEPS_PER_S, "env steps/s"),  # the sample lane's items are env steps
                            metric(m.LANE_ITEMS_PER_S["sample"], "sample lane", ENV_STEPS_PER_S_UNIT)), "zero"),
    Panel("infer lane: observations / s", (metric(m.LANE_ITEMS_PER_S["infer"], "infer lane", "observations/s"),),
          "zero"),
    Panel(f"learn lane: samples / s (over {SMOOTH_ROWS} rows)",
          (Curve("learn samples/s", "samples/s", smoothed(rates.learn_samples_per_s)),), "zero"),
    Panel(f"updates (= weight versions) / min (over {SMOOTH_ROWS} rows)",
          (Curve("updates/min", "versions/min", smoothed(rates.updates_per_s, 60.0)),), "zero"),
    Panel("time per update (s)", (metric(m.LEARN_S, "learn (one update)"),), "zero"),
    Panel("time per publish (ms)", (metric(m.PUBLISH_MS, "distribute (one version)"),), "zero"),
    Panel("lane busy fraction", tuple(metric(m.LANE_BUSY[lane], lane) for lane in m.LANES), "fraction"),
    Panel("GPU busy fraction", (metric(m.GPU_BUSY),), "fraction", optional=True),
    Panel("staleness (versions)", (metric(m.STALENESS_MEAN, "mean"), metric(m.STALENESS_MAX, "max")), "zero"),
    Panel("losses", (metric(m.LOSS), metric(m.PG_LOSS), metric(m.V_LOSS))),
    Panel("entropy (nats)", (metric(m.ENTROPY),)),
    Panel("approx KL (nats)", (metric(m.APPROX_KL),)),
    Panel("clip fraction", (metric(m.CLIPFRAC),), "fraction"),
    Panel("explained variance (PPO)", (metric(m.EXPLAINED_VARIANCE),), optional=True),
)
COLUMNS = 3


def _points(rows: Rows, x: str, scale: float, curve: Curve) -> list[tuple[float, float]]:
    return [(r[x] / scale, v) for r, v in zip(rows, curve.values(rows), strict=True)
            if v is not None and isinstance(r.get(x), int | float)]


def figure(runs: Sequence[tuple[str, Rows]], x: str = m.ENV_STEPS, title: str = "") -> Figure:
    """The report of each run's rows (``(label, rows)``) as a matplotlib figure.

    ``x`` is ``env_steps`` or ``time_s`` (drawn in minutes). A panel without data says so rather than
    vanish, so every report has the same layout (except the optional panels)."""
    drawn_panels = [p for p in PANELS if not p.optional
                    or any(_points(rows, x, 1.0, c) for _, rows in runs for c in p.curves)]
    nrows = (len(drawn_panels) + COLUMNS - 1) // COLUMNS
    fig, axes = plt.subplots(nrows, COLUMNS, figsize=(5.5 * COLUMNS, 3.0 * nrows), constrained_layout=True,
                             squeeze=False)
    if title:
        fig.suptitle(title)
    scale = 60.0 if x == m.TIME_S else 1.0
    several = len(runs) > 1
    for ax, panel in zip(axes.flat, drawn_panels, strict=False):
        top = 0.0
        for n, (label, rows) in enumerate(runs):
            for k, curve in enumerate(panel.curves):
                pts = _points(rows, x, scale, curve)
                if not pts:
                    continue
                style = {"color": f"C{n if several else k}", "linestyle": STYLES[k % len(STYLES)]}
                name = f"{label} {curve.label}" if several else curve.label
                ax.plot(*zip(*pts, strict=True), label=name, **style)
                top = max(top, max(y for _, y in pts))
        if not ax.lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif several:  # one entry per run (its colour), one per curve (its line style)
            drawn = {line.get_label() for line in ax.lines}
            handles = [Line2D([], [], color=f"C{n}", label=label) for n, (label, _) in enumerate(runs)
                       if any(name.startswith(f"{label} ") for name in drawn)]
            if len(panel.curves) > 1:
                handles += [Line2D([], [], color="grey", linestyle=STYLES[k % len(STYLES)], label=curve.label)
                            for k, curve in enumerate(panel.curves) if any(name.endswith(f" {curve.label}")
                                                                            for name in drawn)]
            ax.legend(handles=handles, fontsize="small")
        elif len(ax.lines) > 1:
            ax.legend(fontsize="small")
        if panel.axis == "fraction":
            ax.set_ylim(0.0, max(1.0, top) * 1.02)
        elif panel.axis == "zero":
            ax.set_ylim(bottom=0.0, top=top * 1.05 if top > 0 else 1.0)
        ax.set_title(panel.title)
        ax.set_xlabel("minutes" if x == m.TIME_S else x.replace("_", " "))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(drawn_panels):]:
        ax.set_visible(False)
    return fig


def plot_runs(runs: Sequence[tuple[str, Rows]], out: str | Path, x: str = m.ENV_STEPS, title: str = "") -> Path:
    """Draw each run's rows (``(label, rows)``) into ``out`` (a PNG, see :func:`figure`); returns the path."""
    fig = figure(runs, x, title)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
