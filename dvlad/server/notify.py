"""systemd's notify protocol (``Type=notify``, ``WatchdogSec``) without libsystemd.

A datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Why ours: it is
a few lines, and a dependency on python-systemd would need the C library on every lab machine.
"""

from __future__ import annotations

import asyncio
import os
import socket


def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``); False when not run by systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval() -> float | None:
    """Half the ``WATCHDOG_USEC`` systemd asks for (its advice), if it is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog(interval: float) -> None:
    """Ping from the event loop itself: a blocked loop stops the pings and systemd restarts dvlad."""
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)
