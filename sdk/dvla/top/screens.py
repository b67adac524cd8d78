"""The screens ``dvla top`` opens over its main one: a job's log, the cancel confirmation, the help.

Why the log is polled by byte offset rather than streamed: a follow stream blocks its thread until
the next line comes, so leaving the screen could not stop it; a request every refresh from the last
offset ends the moment the screen closes and costs the daemon one small file read.
"""

from __future__ import annotations

import codecs
import threading
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Log, Static
from textual.worker import get_current_worker

from dvla.client import Client
from dvla.errors import DaemonUnavailable, DvlaError
from dvla.metric_names import SUCCESS_MIN_EPISODES
from dvla.top.snapshot import LANE_WINDOW_S, LANE_WINDOW_UPDATES

LOG_LINES = 5000
"""Lines the log screen keeps: a long job's log scrolls, memory stays bounded."""


class LogScreen(Screen[None]):
    """The selected job's log, following new lines as they are written; ``escape`` goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]

    def __init__(self, client: Client, job_id: int, title: str, refresh_s: float):
        super().__init__()
        self.client, self.job_id, self.title_text, self.refresh_s = client, job_id, title, refresh_s
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Static(f"[b]log of job {self.job_id} · {self.title_text}[/b] (escape: back)", id="log-title")
        yield Log(max_lines=LOG_LINES, id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.follow()

    def on_unmount(self) -> None:
        self._stop.set()

    @work(thread=True, exclusive=True)
    def follow(self) -> None:
        """Fetch what the log grew by since the last request, every refresh, until the screen closes.

        Offsets count the log's bytes; the text is decoded incrementally, so a character split
        between two fetches, or a byte that is not UTF-8, costs neither a byte nor the next line."""
        worker, offset, log = get_current_worker(), 0, self.query_one("#log", Log)
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        down = False
        while not worker.is_cancelled and not self._stop.is_set():
            try:
                chunk = self.client.log_bytes(self.job_id, offset=offset)
            except DaemonUnavailable as exc:
                if not down:
                    self.app.call_from_thread(log.write, f"[daemon unreachable: {exc.where}; retrying]\n")
                chunk, down = b"", True
            except DvlaError as exc:
                self.app.call_from_thread(log.write, f"[{exc}]\n")
                return
            else:
                down = False
            if chunk:
                offset += len(chunk)
                self.app.call_from_thread(log.write, text.decode(chunk))
            self._stop.wait(self.refresh_s)


class ConfirmScreen(ModalScreen[bool]):
    """"Cancel job N?" answered with y or n (escape is no)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", "yes"), Binding("n", "answer(False)", "no"),
                Binding("escape", "answer(False)", "no", show=False)]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question)
            yield Static("[b]y[/b] yes   [b]n[/b] no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


HELP = f"""[b]dvla top[/b]: the daemon's node (CPU, RAM, CPU slots, GPUs), its queue, the selected job's lanes

  [b]↑ ↓ / k j[/b]  select a job
  [b]l[/b]          follow the selected job's log ([b]escape[/b] goes back)
  [b]c[/b]          cancel the selected job (asks y/n)
  [b]f[/b]          hide or show finished jobs (succeeded, failed, cancelled)
  [b]?[/b]          this help
  [b]q[/b]          quit

GPU memory bars: █ weight pool, ▓ activation pool, ▒ other, ░ free (pools shown where the selected
job reports them; otherwise used/total and "pools n/a"). A narrow terminal drops bars and columns
rather than cut a figure. "–" marks what the node cannot measure or a job has not reported yet.
A REASON ending in "…" is shortened to fit: select the job to read it whole below the queue.
Lanes: items/s and busy over the newest rows spanning {LANE_WINDOW_S:g} s and {LANE_WINDOW_UPDATES} updates;
"per update" is the time one learner update (learn) or one version's publish (distribute) takes. Success is "–" until
{SUCCESS_MIN_EPISODES} episodes have ended. Sparklines: one cell per update, newest last; the figures at the
left are the axis's top and bottom; a blank cell is an update without that figure."""


class HelpScreen(ModalScreen[None]):
    """The keys; any of escape, ``?`` or ``q`` closes it (a modal screen holds the app's keys back)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "app.pop_screen", "back")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(HELP)
