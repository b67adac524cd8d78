"""What dvlad holds while it serves, opened and closed by the aiohttp app's cleanup contexts (as
aiohttp's own examples do): the state directory's lock, the store, the node's inventory, the
scheduling loop and systemd's watchdog.

Why the app owns them: ``AppRunner.setup()`` opens them in order and ``AppRunner.cleanup()`` closes
them in the reverse order once the listeners have stopped, so no request meets a closed store; and a
start that fails half-way (another dvlad on the state directory, a recorded topology that cannot be
read) still closes what it had opened.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from dvlad.config import Config
from dvlad.gpu.inventory import discover
from dvlad.runtime.launch import PASS_THROUGH
from dvlad.server import prom
from dvlad.server.core import Daemon
from dvlad.server.host import HostLoad
from dvlad.server.notify import watchdog, watchdog_interval
from dvlad.store import Store

CONFIG = web.AppKey("config", Config)
STATE_DIR = web.AppKey("state_dir", Path)
STORE = web.AppKey("store", Store)
DAEMON = web.AppKey("daemon", Daemon)
HOST = web.AppKey("host", HostLoad)
"""The machine's CPU and RAM readings, shared by ``/v1/nodes`` and the heartbeats."""
TASKS = web.AppKey("tasks", list)
"""The daemon's background tasks: one that ends on its own ends dvlad (``main`` waits on them)."""


async def hold_lock(app: web.Application) -> AsyncIterator[None]:
    """One dvlad per state dir: a second one would supervise the same jobs twice."""
    state_dir = app[STATE_DIR]
    state_dir.mkdir(parents=True, exist_ok=True, mode=PASS_THROUGH)
    os.chmod(state_dir, PASS_THROUGH)  # users pass through to their jobs' run/ and uploads, never list it
    fd = os.open(state_dir / "dvlad.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"dvlad: another dvlad holds {state_dir}/dvlad.lock") from None
    yield
    os.close(fd)


async def open_store(app: web.Application) -> AsyncIterator[None]:
    previous_umask = os.umask(0o077)  # the database and its WAL files: the daemon's alone
    try:
        app[STORE] = Store(app[STATE_DIR] / "dvlad.db")
    finally:
        os.umask(previous_umask)
    yield
    app[STORE].close()


async def run_daemon(app: web.Application) -> AsyncIterator[None]:
    """The node's inventory, the :class:`Daemon` over the store, and its tasks: the scheduling loop
    (which first re-adopts the jobs a previous dvlad left running) and, under systemd, the watchdog."""
    config = app[CONFIG]
    try:
        inventory = discover(config.node.fake_topology)
    except (OSError, ValueError) as exc:  # a recorded topology that cannot be read: say which
        raise SystemExit(f"dvlad: cannot read the recorded topology: {exc}") from None
    daemon = app[DAEMON] = Daemon(config, app[STORE], inventory, app[STATE_DIR])
    federation = None
    if config.federation.enabled:  # before the scheduling loop: it may meet multi-node jobs at once
        from dvlad.config import ConfigError
        from dvlad.fed.service import Federation

        try:
            federation = Federation(config, daemon, app[HOST], app[STATE_DIR])
        except ConfigError as exc:  # the secret file changed since the config was checked
            raise SystemExit(f"dvlad: config: {exc}") from None
    app[prom.REGISTRY] = prom.registry_for(daemon, app[STATE_DIR])
    tasks = app[TASKS] = [asyncio.create_task(daemon.run(), name="daemon")]
    if federation is not None:
        tasks += federation.tasks()
    if interval := watchdog_interval():
        tasks.append(asyncio.create_task(watchdog(interval), name="watchdog"))
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # one that died is main's to report
    if federation is not None:
        await federation.close()


CONTEXTS = (hold_lock, open_store, run_daemon)
"""In the order they open; they close in the reverse one."""
