"""A free TCP port, for a rendezvous that a process picks before the others connect to it."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of ``host`` that nothing listens on (now): the learner ranks' rendezvous, on the
    loopback for one node's ranks, on the coordinator's advertised host for a job's node parts."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
