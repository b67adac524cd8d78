"""The main screen's panels: GPUs, the job queue, and the selected job's pipeline.

Why widgets that take a whole :class:`~dvla.top.snapshot.Snapshot`: the app hands each poll to every
panel and each redraws only what it owns, so no panel asks the daemon anything itself.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Sparkline, Static

from dvla.top.render import gpu_table, lanes_table, pipeline_line
from dvla.top.snapshot import JobDetail, JobRow, Snapshot, fmt_duration, fmt_num

COLUMNS = ("ID", "USER", "NAME", "STATE", "PRI", "GPUS", "TIME")


class GpuPanel(Static):
    """Every GPU of the node: utilisation, memory and its pools, temperature, power, holder."""

    def show(self, snap: Snapshot) -> None:
        if not snap.gpus:
            self.update("; ".join(snap.notes) or "no GPUs")
            return
        self.update(gpu_table(snap))


def cells(row: JobRow) -> tuple[str, ...]:
    return (str(row.id), row.user, row.name, row.state, str(row.priority), row.gpus, fmt_duration(row.runtime_s))


class JobsTable(DataTable[str]):
    """The queue, newest last; the cursor row is the selected job (arrows or j/k move it)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("j", "cursor_down", "down", show=False),
                                               Binding("k", "cursor_up", "up", show=False)]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for name in COLUMNS:
            self.add_column(name, key=name)

    @property
    def selected(self) -> int | None:
        """The job id under the cursor (None while the table is empty)."""
        if not self.row_count:
            return None
        return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value or 0)

    def show(self, rows: tuple[JobRow, ...], prefer: int | None) -> None:
        """Put ``rows`` on screen keeping the cursor on its job; ``prefer`` places it on a first fill.

        Cells change in place while the set of jobs stays the same (every cycle: runtimes tick), so
        the cursor is never reset; a new or vanished job rebuilds the rows and puts the cursor back."""
        keys = [str(r.id) for r in rows]
        if keys == [k.value for k in self.rows]:
            for row in rows:
                for column, value in zip(COLUMNS, cells(row), strict=True):
                    if self.get_cell(str(row.id), column) != value:
                        self.update_cell(str(row.id), column, value, update_width=True)
            return
        keep = self.selected if self.row_count else prefer
        self.clear()
        for row in rows:
            self.add_row(*cells(row), key=str(row.id))
        if keep is not None and str(keep) in keys:
            self.move_cursor(row=keys.index(str(keep)))


class DetailPanel(Vertical):
    """The selected job's four lanes, queue and staleness, and sparklines of its recent updates."""

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with Horizontal():
            yield Static(id="lanes")
            with Vertical(id="sparks"):
                yield Static(id="success-label")
                yield Sparkline([], id="success")
                yield Static(id="speed-label")
                yield Sparkline([], id="speed")

    def show(self, detail: JobDetail | None) -> None:
        title, lanes = self.query_one("#detail-title", Static), self.query_one("#lanes", Static)
        success, speed = self.query_one("#success", Sparkline), self.query_one("#speed", Sparkline)
        if detail is None:
            title.update("no job selected")
            lanes.update("")
            success.data = speed.data = []
            return
        title.update(f"[b]job {detail.id} · {detail.name or '-'} · {detail.state}[/b]   {pipeline_line(detail)}")
        lanes.update(lanes_table(detail))
        last_success = detail.success_rate[-1] if detail.success_rate else None
        last_speed = detail.env_steps_per_s[-1] if detail.env_steps_per_s else None
        self.query_one("#success-label", Static).update(
            f"success rate {fmt_num(last_success, '.2f')} (last {len(detail.success_rate)} updates)")
        self.query_one("#speed-label", Static).update(
            f"env steps/s {fmt_num(last_speed, ',.0f')} (last {len(detail.env_steps_per_s)} updates)")
        success.data, speed.data = list(detail.success_rate), list(detail.env_steps_per_s)
