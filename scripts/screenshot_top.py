"""The captures of ``dvla top`` in docs/top.md: a real dvlad replaying the recorded H100, real jobs, the
monitor drawn headless at 160x45 and at 80x24, and at 80x24 with the waiting job selected.

Why a script: the captures show what a person meets, so they are made the way a person gets them (a
daemon, a finished job, two running, one waiting for CPU slots), and remade after every change to the
screen. It writes ``docs/NAME.txt`` and ``docs/NAME.svg`` for each capture (``top-160x45``, ``top-80x24``,
``top-80x24-queued``) and puts each text capture into docs/top.md between its ``<!-- NAME -->`` and
``<!-- /NAME -->`` markers.

    .venv/bin/python scripts/screenshot_top.py [--rows 40]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dvla.client import Client
from dvla.metric_names import SUCCESS_MIN_EPISODES
from dvla.top.app import TopApp, capture
from dvlad.testing import FIXTURE, LONG, ROOT, Dvlad

CAPTURES = (("top-160x45", 160, 45, ()), ("top-80x24", 80, 24, ()), ("top-80x24-queued", 80, 24, ("j",)))
"""Name, width, height and the keys pressed first: ``j`` moves the cursor from the newest running job to
the waiting one, whose panel then says why it waits."""
QUICK = {**LONG, "job": {"name": "warm-up"}, "train": {**LONG["train"], "total_env_steps": 512}}
"""A job that succeeds within seconds: the queue shows a finished job."""
RUNNING = {**LONG, "env": {**LONG["env"], "workers": 2}}
"""Runs until cancelled on 2 CPU slots: two of them fill the node's 4."""


def wait(what: str, ok, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout} s")
        time.sleep(0.5)


def put_in_doc(doc: Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- name -->`` and ``<!-- /name -->`` in ``doc`` with ``text``."""
    marked = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    body = doc.read_text()
    if not marked.search(body):
        raise SystemExit(f"{doc} has no <!-- {name} --> ... <!-- /{name} --> markers")
    doc.write_text(marked.sub(lambda mt: f"{mt.group(1)}```text\n{text.rstrip()}\n```\n{mt.group(2)}", body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " ").replace("``", ""),
                                     epilog="The jobs run until the selected one has written --rows rows.")
    parser.add_argument("--rows", type=int, default=40,
                        help="metric rows the selected job writes before the captures (default 40)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs",
                        help="where the captures and top.md are (default: the checkout's docs/)")
    args = parser.parse_args()
    if not FIXTURE.exists():
        raise SystemExit(f"the recorded topology {FIXTURE} is not here")
    daemon = Dvlad("[node]\ncpu_slots = 4\n", env={"DVLAD_FAKE_TOPOLOGY": str(FIXTURE)})
    daemon.start()
    try:
        with Client(daemon.socket) as client:
            warm = client.submit(QUICK)
            wait("finished warm-up job", lambda: client.job(warm.id)["state"] == "succeeded")
            client.submit({**RUNNING, "job": {"name": "synthetic-a"}})
            newest = client.submit({**RUNNING, "job": {"name": "synthetic-b"}})
            client.submit({**RUNNING, "job": {"name": "waits-for-slots"}})

            def ready() -> bool:
                rows = client.metrics(newest.id, last=1) if client.job(newest.id)["state"] == "running" else []
                return bool(rows) and rows[-1]["version"] >= args.rows \
                    and rows[-1]["episodes"] >= SUCCESS_MIN_EPISODES

            wait(f"{args.rows} rows of job {newest.id}", ready)

            def drawn(app: TopApp) -> bool:  # the lanes and the waiting job's reason on screen
                return app.snapshot.detail is not None and app.snapshot.detail.updates_per_min is not None \
                    and any(r.reason.startswith("resources") for r in app.snapshot.jobs)

            for name, width, height, keys in CAPTURES:
                text, svg = asyncio.run(capture(client, width, height, keys=keys, ready=drawn, timeout=60, settle_s=6))
                (args.docs / f"{name}.txt").write_text(text.rstrip("\n") + "\n")
                (args.docs / f"{name}.svg").write_text(svg)
                put_in_doc(args.docs / "top.md", name, text)
                print(f"wrote {args.docs / name}.txt and .svg")
            for job in client.jobs():
                if job["state"] in {"queued", "running"}:
                    client.cancel(job["id"])
    finally:
        daemon.close()


if __name__ == "__main__":
    main()
