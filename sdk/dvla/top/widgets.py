"""The main screen's panels: the node (CPU, RAM, CPU slots, GPUs), the job queue, and the selected job's
pipeline.

Why widgets that take a whole :class:`~dvla.top.snapshot.Snapshot`: the app hands each poll to every
panel and each redraws only what it owns, so no panel asks the daemon anything itself.
"""

from __future__ import annotations

from typing import ClassVar

from rich.cells import cell_len
from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from dvla.top.render import MEMORY_LEGEND, NodeLine, detail_title, fit_reason, gpu_table, lanes_table, sparklines
from dvla.top.snapshot import JobDetail, JobRow, Snapshot, fmt_duration

TALL = 30
"""Terminal rows from which the sparklines are two rows high (one on a shorter one: the queue needs them)."""
SPARK_ROWS = 2
COLUMNS = ("ID", "USER", "NAME", "STATE", "PRI", "GPUS", "TIME", "REASON")


class NodePanel(Static):
    """The node's CPU, RAM and CPU slots, then every GPU: utilisation, memory and its pools,
    temperature, power, holder."""

    def show(self, snap: Snapshot) -> None:
        parts: list = [NodeLine(snap.node)] if snap.node is not None else []
        parts.append(gpu_table(snap) if snap.gpus else Text("; ".join(snap.notes) or "no GPUs", style="yellow"))
        self.border_subtitle = MEMORY_LEGEND if snap.gpus else ""
        self.update(Group(*parts))


REASON_MIN = 12
"""Cells the REASON column is given however narrow the terminal (the table scrolls sideways then): a
reason's category (``resources…``) or its first words (``cancelled by…``)."""


def cells(row: JobRow) -> tuple[str, ...]:
    """The row's cells, its reason in full (:meth:`JobsTable.show` fits it to the room left)."""
    return (str(row.id), row.user, row.name, row.state, str(row.priority), row.gpus, fmt_duration(row.runtime_s),
            row.reason)


class JobsTable(DataTable[str]):
    """The queue, newest last; the cursor row is the selected job (arrows or j/k move it).

    Why the REASON cells are fitted to the table's width: the other columns are short and whole, and
    a reason cut by the edge of the table (``resources: waits for 2``) loses what it says, so each
    reason shows the longest of its forms that fits the room they leave (:func:`fit_reason`: in
    full, a first clause, the category as squeue's short codes), and the selected job's panel shows it
    whole."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("j", "cursor_down", "down", show=False),
                                               Binding("k", "cursor_up", "up", show=False)]
    rows_shown: tuple[JobRow, ...] = ()
    """The rows of the last :meth:`show`, drawn again on a resize."""
    reason_room = 0
    """The REASON column's cells at the last fill: a different room (a resize, a longer TIME) refills."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns_keyed()

    def add_columns_keyed(self) -> None:
        """The queue's columns, each keyed by its title (cells are updated by column key)."""
        for name in COLUMNS:
            self.add_column(name, key=name)

    @property
    def selected(self) -> int | None:
        """The job id under the cursor (None while the table is empty)."""
        if not self.row_count:
            return None
        return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value or 0)

    def room_for_reason(self, rows: tuple[JobRow, ...]) -> int:
        """The cells left to the REASON column by the others at their natural width (their longest
        cell or title, each with its padding), at least :data:`REASON_MIN`."""
        table = [cells(row)[:-1] for row in rows]
        taken = sum(max([cell_len(name), *(cell_len(r[i]) for r in table)]) + 2 * self.cell_padding
                    for i, name in enumerate(COLUMNS[:-1]))
        return max(REASON_MIN, self.scrollable_content_region.width - taken - 2 * self.cell_padding)

    def on_resize(self) -> None:
        if self.rows_shown:
            self.show(self.rows_shown, self.selected)

    def show(self, rows: tuple[JobRow, ...], prefer: int | None) -> None:
        """Put ``rows`` on screen keeping the cursor on its job; ``prefer`` places it on a first fill
        and when the job under the cursor is no longer listed.

        Cells change in place while the set of jobs and the room for reasons stay the same (every
        cycle: runtimes tick), so the cursor is never reset; a new or vanished job, or a new width,
        rebuilds the rows (the columns' widths with them) and puts the cursor back."""
        room = self.room_for_reason(rows)
        fitted = {row.id: (*cells(row)[:-1], fit_reason(row.reason, room)) for row in rows}
        keys = [str(r.id) for r in rows]
        self.rows_shown = rows
        if keys == [k.value for k in self.rows] and room == self.reason_room:
            for row in rows:
                for column, value in zip(COLUMNS, fitted[row.id], strict=True):
                    if self.get_cell(str(row.id), column) != value:
                        self.update_cell(str(row.id), column, value, update_width=True)
            return
        keep = self.selected if self.row_count else None
        if keep is None or str(keep) not in keys:
            keep = prefer
        self.reason_room = room
        self.clear(columns=True)
        self.add_columns_keyed()
        for row in rows:
            self.add_row(*fitted[row.id], key=str(row.id))
        if keep is not None and str(keep) in keys:
            self.move_cursor(row=keys.index(str(keep)))


class DetailPanel(Vertical):
    """The selected job: its success and pipeline figures, its four lanes, and sparklines of its
    recent updates, each with its scale."""

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with Horizontal(id="detail-body"):
            yield Static(id="lanes")
            yield Static(id="sparks")

    def show(self, detail: JobDetail | None) -> None:
        title, lanes = self.query_one("#detail-title", Static), self.query_one("#lanes", Static)
        sparks = self.query_one("#sparks", Static)
        if detail is None:
            title.update("no job selected")
            lanes.update("")
            sparks.update("")
            return
        title.update(detail_title(detail))
        lanes.update(lanes_table(detail))
        sparks.update(sparklines(detail, height=SPARK_ROWS if self.app.size.height >= TALL else 1))
