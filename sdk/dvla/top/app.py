"""``dvla top``: the textual app that ties the poller to the panels, and the keys.

Why polling runs in a thread worker: every request may wait on the network (a remote daemon over
TCP, or one that went away), and the UI must keep answering keys meanwhile. The worker polls, hands
each :class:`~dvla.top.snapshot.Snapshot` to the UI thread, and sleeps until the next refresh or until
the selection changes (then it polls at once, so the lanes follow the cursor without waiting).
"""

from __future__ import annotations

import threading
import time
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from dvla.client import Client
from dvla.errors import DvlaError
from dvla.top.poller import Poller
from dvla.top.render import status_line
from dvla.top.screens import ConfirmScreen, HelpScreen, LogScreen
from dvla.top.snapshot import Snapshot
from dvla.top.widgets import DetailPanel, GpuPanel, JobsTable

CSS = """
#status { height: 1; background: $boost; }
#gpus { height: auto; max-height: 12; border: round $primary; border-title-align: left; }
#jobs { height: 1fr; min-height: 5; border: round $primary; }
#detail { height: 12; border: round $primary; }
#lanes { width: 46; }
#sparks { width: 1fr; padding-left: 2; }
Sparkline { height: 3; }
ModalScreen { align: center middle; }
#dialog { width: auto; max-width: 110; height: auto; border: thick $warning; padding: 1 2; background: $surface; }
#dialog Static { width: auto; }
#log { height: 1fr; }
"""


class TopApp(App[None]):
    """The monitor. ``client`` is the daemon to watch; ``refresh_s`` the seconds between polls."""

    CSS = CSS
    TITLE = "dvla top"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"), Binding("l", "logs", "logs"), Binding("c", "cancel_job", "cancel"),
        Binding("question_mark", "help", "help", key_display="?")]

    def __init__(self, client: Client, refresh_s: float = 0.5):
        super().__init__()
        self.client, self.refresh_s = client, refresh_s
        self.poller = Poller(client)
        self.snapshot = Snapshot()
        self.selected: int | None = None
        """The job under the cursor: the poller fetches its metrics. Read by the poll thread."""
        self._wake = threading.Event()

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield GpuPanel(id="gpus")
        yield JobsTable(id="jobs")
        yield DetailPanel(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#gpus").border_title = "GPUs"
        self.query_one("#jobs").border_title = "queue"
        self.query_one("#detail").border_title = "selected job"
        self.query_one(JobsTable).focus()
        self.poll()

    def on_unmount(self) -> None:
        self._wake.set()

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        """Poll every ``refresh_s`` (or at once when woken) until the app ends."""
        worker = get_current_worker()
        while not worker.is_cancelled:
            started = time.monotonic()
            snap = self.poller.poll(self.selected)
            if worker.is_cancelled:
                return
            self.call_from_thread(self.show, snap)
            self._wake.wait(max(0.0, self.refresh_s - (time.monotonic() - started)))
            self._wake.clear()

    def show(self, snap: Snapshot) -> None:
        """Draw one poll. The lanes are drawn only for the job still under the cursor, so a poll that
        left before the cursor moved does not flash the previous job's figures."""
        self.snapshot = snap
        self.query_one("#status", Static).update(status_line(snap, self.client.endpoint.where, self.refresh_s))
        self.query_one(GpuPanel).show(snap)
        self.query_one(JobsTable).show(snap.jobs, snap.detail.id if snap.detail else None)
        if self.selected is None or snap.detail is None or snap.detail.id == self.selected:
            self.query_one(DetailPanel).show(snap.detail)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        job_id = int(event.row_key.value or 0)
        if job_id != self.selected:
            self.selected = job_id
            self._wake.set()

    def _selected_row(self) -> tuple[int, str] | None:
        job_id = self.query_one(JobsTable).selected
        row = next((r for r in self.snapshot.jobs if r.id == job_id), None)
        return (row.id, row.name or "-") if row else None

    def action_logs(self) -> None:
        chosen = self._selected_row()
        if chosen is None:
            self.notify("no job selected", severity="warning")
            return
        self.push_screen(LogScreen(self.client, chosen[0], chosen[1], self.refresh_s))

    def action_cancel_job(self) -> None:
        chosen = self._selected_row()
        if chosen is None:
            self.notify("no job selected", severity="warning")
            return
        job_id, name = chosen

        def answered(yes: bool | None) -> None:
            if yes:
                self.cancel(job_id)

        self.push_screen(ConfirmScreen(f"Cancel job {job_id} ({name})?"), answered)

    @work(thread=True, group="cancel")
    def cancel(self, job_id: int) -> None:
        """Ask the daemon to cancel; its answer (or its reason for refusing) becomes a notification."""
        try:
            state = self.client.cancel(job_id)["state"]
        except DvlaError as exc:
            self.call_from_thread(self.notify, f"job {job_id} not cancelled: {exc.reason}", severity="error",
                                  timeout=8)
            return
        self.call_from_thread(self.notify, f"job {job_id}: {state}")
        self._wake.set()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


def run_top(client: Client, refresh_s: float = 0.5) -> None:
    """Run the monitor full-screen on this terminal until the user quits (``q``)."""
    TopApp(client, refresh_s).run()
