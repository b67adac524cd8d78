"""``dvla top``: the textual app that ties the poller to the panels, and the keys.

Why polling runs in a thread worker: every request may wait on the network (a remote daemon over
TCP, or one that went away), and the UI must keep answering keys meanwhile. The worker polls, hands
each :class:`~dvla.top.snapshot.Snapshot` to the UI thread, and sleeps until the next refresh or until
the selection changes (then it polls at once, so the lanes follow the cursor without waiting).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.console import Console
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from dvla.client import Client
from dvla.errors import DvlaError
from dvla.top.poller import Poller
from dvla.top.render import StatusLine
from dvla.top.screens import ConfirmScreen, HelpScreen, LogScreen
from dvla.top.snapshot import Snapshot, pick_selected
from dvla.top.widgets import DetailPanel, JobsTable, NodePanel

CSS = """
#status { height: 1; background: $boost; }
#node { height: auto; max-height: 12; border: round $primary; border-title-align: left;
        border-subtitle-align: right; }
#jobs { height: 1fr; min-height: 5; border: round $primary; }
#detail { height: auto; border: round $primary; }
#detail-title { height: auto; }
#detail-body { height: auto; }
#lanes { width: 48; height: auto; }
#sparks { width: 1fr; height: auto; padding-left: 2; }
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
        Binding("f", "toggle_finished", "finished"), Binding("question_mark", "help", "help", key_display="?")]

    def __init__(self, client: Client, refresh_s: float = 0.5):
        super().__init__()
        self.client, self.refresh_s = client, refresh_s
        self.poller = Poller(client)
        self.snapshot = Snapshot()
        self.selected: int | None = None
        """The job under the cursor: the poller fetches its metrics. Read by the poll thread."""
        self._wake = threading.Event()
        self.hide_finished = False
        """The ``f`` key: leave succeeded, failed and cancelled jobs out of the queue."""

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield NodePanel(id="node")
        yield JobsTable(id="jobs")
        yield DetailPanel(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#node").border_title = "node"
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
        left before the cursor moved does not flash the previous job's figures. A poll that lands while
        the app shuts down (``q`` pressed during a poll) is dropped: its widgets are already going."""
        if not self.is_running:
            return
        self.snapshot = snap
        self.query_one("#status", Static).update(StatusLine(snap, self.client.endpoint.where, self.refresh_s))
        self.query_one(NodePanel).show(snap)
        self.show_queue()
        if self.selected is None or snap.detail is None or snap.detail.id == self.selected:
            self.query_one(DetailPanel).show(snap.detail)

    def show_queue(self) -> None:
        """The queue, without the finished jobs while they are hidden; the cursor stays on its job, or
        goes to the job :func:`~dvla.top.snapshot.pick_selected` picks among those shown."""
        jobs = self.snapshot.jobs
        shown = tuple(r for r in jobs if not (self.hide_finished and r.finished))
        table = self.query_one(JobsTable)
        hidden = len(jobs) - len(shown)
        table.border_title = (f"queue · {hidden} finished hidden (f shows them)" if self.hide_finished
                              else "queue · f hides finished jobs")
        detail = self.snapshot.detail
        prefer = detail.id if detail and detail.id in {r.id for r in shown} else pick_selected(
            [{"id": r.id, "state": r.state} for r in shown], None)
        table.show(shown, prefer)

    def action_toggle_finished(self) -> None:
        self.hide_finished = not self.hide_finished
        self.show_queue()

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

    def screen_text(self) -> str:
        """The screen as plain text, as a terminal shows it (what the tests read and the docs keep)."""
        console = Console(width=self.size.width, height=self.size.height, file=io.StringIO(), record=True,
                          force_terminal=True, color_system="truecolor", legacy_windows=False, safe_box=False)
        console.print(self.screen._compositor.render_update(full=True, screen_stack=self._background_screens))
        return console.export_text()


async def capture(client: Client, width: int, height: int, *, keys: Sequence[str] = (), timeout: float = 30.0,
                  ready: Callable[[TopApp], bool] = lambda app: app.snapshot.detail is not None,
                  refresh_s: float = 0.5, settle_s: float = 0.0) -> tuple[str, str]:
    """The monitor run headless in a ``width`` x ``height`` terminal until ``ready`` (by default: a job's
    figures on screen) and for at least ``settle_s`` (the status line's rate is measured over 5 s),
    then ``keys`` pressed: its screen as text and as SVG (the docs' captures, the tests' screens)."""
    app = TopApp(client, refresh_s)
    async with app.run_test(size=(width, height)) as pilot:
        started = time.monotonic()
        deadline = started + timeout
        while not ready(app) or time.monotonic() - started < settle_s:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the monitor was not ready within {timeout} s:\n{app.screen_text()}")
            await pilot.pause(0.1)
        await pilot.pause(0.2)  # the poll that made it ready, drawn
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.2)
        return app.screen_text(), app.export_screenshot()


def run_top(client: Client, refresh_s: float = 0.5) -> None:
    """Run the monitor full-screen on this terminal until the user quits (``q``)."""
    TopApp(client, refresh_s).run()
