"""Heartbeats: every ``heartbeat_s`` this daemon tells each peer that it is alive and what it has free.

Why push, and to every peer: each daemon then knows its peers' free room and age without asking when
a multi-node job arrives, and a coordinator learns that a peer is down from its silence alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from dvlad.fed.client import PeerClient, PeerError
from dvlad.fed.peers import PeerTable

log = logging.getLogger("dvlad")
PATH = "/v1/fed/heartbeat"


async def send_round(client: PeerClient, peers: PeerTable, report: dict[str, Any]) -> None:
    """One heartbeat to every peer, at once; a peer that cannot be reached is noted (its state follows
    from its own heartbeats, not from this)."""
    async def one(addr: str) -> None:
        peer = peers.peers[addr]
        try:
            await client.call(addr, "POST", PATH, report, timeout_s=max(1.0, peers.down_after_s / 2))
        except PeerError as exc:
            if not peer.last_error:
                log.warning("heartbeat to a peer failed", extra={"peer": addr, "reason": exc.reason})
            peer.last_error = exc.reason
        else:
            peer.last_error = ""

    await asyncio.gather(*(one(addr) for addr in peers.peers))


async def run(client: PeerClient, peers: PeerTable, report: Callable[[], dict[str, Any]], every_s: float) -> None:
    """Send heartbeats for ever, logging each peer going down or coming (back) up."""
    was_up: dict[str, bool] = {}
    while True:
        try:
            await send_round(client, peers, report())
        except Exception:  # a round that failed must not end the heartbeats
            log.exception("a heartbeat round failed")
        for addr, peer in peers.peers.items():
            up = peers.up(peer)
            if was_up.get(addr, False) != up and (up or addr in was_up):
                log.log(logging.INFO if up else logging.WARNING, "peer is " + ("up" if up else "down"),
                        extra={"peer": addr, "node": peer.name})
            was_up[addr] = up
        await asyncio.sleep(every_s)
