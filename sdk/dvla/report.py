"""A job's metric rows as one PNG of curves: learning (success rate, return), throughput (env steps/s,
each lane's busy fraction and items/s), staleness, and GPU busy where the rows have it.

Why here, in the client: ``dvla report`` draws rows fetched over HTTP (``client.metrics``) on a laptop
without torch, and ``scripts/plot_run.py`` draws the same panels from run directories on disk; both call
:func:`plot_runs`. Matplotlib only (the Agg backend: no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display needed

from dvla import metric_names as m

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Panel:
    title: str
    keys: tuple[str, ...]
    """The row keys this panel draws, one curve each."""
    ylim: tuple[float, float] | None = None
    optional: bool = False
    """Left out when the rows hold none of its keys (GPU busy: only jobs on a GPU report it)."""


PANELS: tuple[Panel, ...] = (
    Panel("success rate (last 100 episodes; GRPO: whole rollouts)", (m.SUCCESS_RATE,), ylim=(-0.02, 1.02)),
    Panel("episode return", (m.EPISODE_RETURN,)),
    Panel("env steps / s", (m.ENV_STEPS_PER_S,)),
    Panel("lane busy fraction", tuple(m.LANE_BUSY.values()), ylim=(-0.02, 1.02)),
    Panel("lane items / s", tuple(m.LANE_ITEMS_PER_S.values())),
    Panel("staleness (versions)", (m.STALENESS_MEAN, m.STALENESS_MAX)),
    Panel("GPU busy", (m.GPU_BUSY,), optional=True),
)


def plot_runs(runs: Sequence[tuple[str, Rows]], out: str | Path, x: str = m.ENV_STEPS, title: str = "") -> Path:
    """Draw each run's rows (``(label, rows)``) into ``out`` (a PNG); returns the path written.

    ``x`` is ``env_steps`` or ``time_s`` (drawn in minutes). A panel whose keys no row holds says so
    rather than vanish, so every report has the same layout (except the optional GPU panel)."""
    every = [row for _, rows in runs for row in rows]
    panels = [p for p in PANELS if not p.optional or any(k in row for row in every for k in p.keys)]
    nrows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrows, 2, figsize=(12, 3.2 * nrows), constrained_layout=True, squeeze=False)
    if title:
        fig.suptitle(title)
    scale = 60.0 if x == m.TIME_S else 1.0
    for ax, panel in zip(axes.flat, panels, strict=False):
        keys = panel.keys
        drawn = 0
        for label, rows in runs:
            for key in keys:
                pts = [(r[x] / scale, r[key]) for r in rows if isinstance(r.get(key), int | float) and x in r]
                if pts:
                    name = key if len(runs) == 1 else f"{label} {key}"
                    ax.plot(*zip(*pts, strict=True), label=name if len(keys) > 1 or len(runs) > 1 else None)
                    drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif len(keys) > 1 or len(runs) > 1:
            ax.legend(fontsize="small")
        if panel.ylim:
            ax.set_ylim(*panel.ylim)
        ax.set_title(panel.title)
        ax.set_xlabel("minutes" if x == m.TIME_S else x.replace("_", " "))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
