"""The daemon's app owns what dvlad holds: setting it up takes the state directory's lock, opens the
store and starts the scheduling loop; cleaning it up stops and closes them, even after a start that
failed half-way. In-process, on the real app, store and lock (no socket: the sites are main's)."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import pytest
from aiohttp import web

from dvlad.config import Config
from dvlad.server.app import make_app
from dvlad.server.lifetime import STORE, TASKS
from dvlad.testing import FIXTURE


def _config(state_dir: str, topology: str) -> Config:
    config = Config()
    config.daemon.state_dir, config.node.fake_topology = state_dir, topology
    return config


def test_the_app_opens_and_closes_what_dvlad_holds_even_after_a_failed_start(tmp_path, monkeypatch):
    monkeypatch.delenv("DVLAD_FAKE_TOPOLOGY", raising=False)  # the config's recording, not the environment's
    good = _config(str(tmp_path / "state"), str(FIXTURE))
    unreadable = _config(str(tmp_path / "state"), str(tmp_path / "missing.json"))

    async def lifetimes() -> None:
        first = web.AppRunner(make_app(good, {}))
        await first.setup()
        app = first.app
        scheduling, = app[TASKS]
        assert app[STORE].get(1) is None and not scheduling.done()
        second = web.AppRunner(make_app(good, {}))
        with pytest.raises(SystemExit, match=re.escape(f"another dvlad holds {tmp_path}/state/dvlad.lock")):
            await second.setup()
        await second.cleanup()
        assert not scheduling.done()  # the refused second dvlad took nothing from the first
        await first.cleanup()
        assert scheduling.cancelled()
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            app[STORE].get(1)

        # the lock is free again: a start that takes it, then finds its topology unreadable, gives it back
        broken = web.AppRunner(make_app(unreadable, {}))
        with pytest.raises(SystemExit, match=r"cannot read the recorded topology: .*missing\.json"):
            await broken.setup()
        await broken.cleanup()
        again = web.AppRunner(make_app(good, {}))
        await again.setup()
        await again.cleanup()

    asyncio.run(lifetimes())
