"""dvlad's configuration (``/etc/dvlad/dvlad.toml``): typed, with every unknown key refused.

Why strict: a misspelt limit silently ignored is a lab where one user takes every GPU.
``dvlad --check-config`` runs exactly this and exits non-zero with the key and the reason.
"""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvlad.sched import Limit, Limits

DEFAULT_CONFIG = Path("/etc/dvlad/dvlad.toml")
PERSONAL_OVERSUBSCRIBE = 4
"""CPU slots per core of a personal daemon (``dvlad --user``) unless its config says otherwise.

Why more than one: a slot is a share of a core, not a core. An env worker keeps one busy; a job's
actor and learner mostly wait on the workers and on each other through queues, so they are not
counted (see :func:`job_cpu_slots`). On a shared server, one slot per core keeps users' jobs from
slowing each other; a personal daemon's jobs slow only their own owner, so it admits what a
laptop can run slowly: four slots per core take the examples' 8-worker LIBERO job on 2 cores (or
several small jobs at once) and still refuse a mistyped ``env.workers = 64``."""


class ConfigError(ValueError):
    """A bad config: ``key`` is dotted (``limits.users.alice.gpus``)."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}" if key else reason)


@dataclass
class DaemonSection:
    state_dir: str = "/var/lib/dvlad"
    """Job store (SQLite) and per-job directories (spec, log, run output)."""
    socket: str = "/run/dvlad/dvlad.sock"
    socket_group: str = "dvla"
    """Group owning the socket (mode 0660); members may talk to dvlad. Skipped if it does not exist."""
    admin_group: str = "dvla-admin"
    """Members (and root) see and cancel every job."""
    users_see_all: bool = False
    """True: every user may list all jobs and read every job's logs (cancel stays owner/admin only)."""
    tcp: str = ""
    """``host:port`` to listen on TCP too (bearer tokens); empty: Unix socket only."""
    tokens_file: str = "/etc/dvlad/tokens"
    """``TOKEN USER`` per line; must not be readable by group or others."""
    cancel_grace_s: float = 30.0
    """SIGTERM, then SIGKILL after this many seconds."""
    max_body_bytes: int = 1 << 20
    max_depth: int = 32
    """Deepest nesting of lists/maps a request body may have."""
    max_upload_bytes: int = 4 << 30
    """Largest tar a client may upload (``POST /v1/uploads``: a remote user's checkpoint); 0: no uploads."""
    header_timeout_s: float = 10.0
    """Longest a connection may take to send a request's head, from its start or the previous reply."""
    body_timeout_s: float = 30.0
    """Longest wait for the next bytes of a request body (a body that stalls gets 408)."""
    max_tcp_connections: int = 4096
    """Most TCP connections open at once (at most half the open-file limit: the rest is the Unix socket's)."""
    max_tcp_unauthenticated: int = 256
    """Most TCP connections open at once that have not yet sent a valid token."""


@dataclass
class NodeSection:
    cpu_slots: int = 0
    """CPU slots for jobs (a job takes one per env worker); 0: the core count × cpu_oversubscribe."""
    cpu_oversubscribe: int = 0
    """CPU slots per core when cpu_slots is 0; 0: 1 for a system daemon, PERSONAL_OVERSUBSCRIBE for
    ``dvlad --user``."""
    fake_topology: str = ""
    """A recorded topology.json replayed instead of NVML (machines without GPUs; tests)."""
    share_base_group: str = ""
    """Members of this group may share one base model between their LoRA jobs (``resources.share_base``);
    empty: only a user's own jobs share one (docs/memory.md, the security rule)."""


@dataclass
class FederationSection:
    """Peer daemons that run multi-node jobs with this one (docs/federation.md). Off while
    ``secret_file`` is empty."""

    name: str = ""
    """This node's name in ``dvla nodes`` and in failure reasons; empty: the host name."""
    advertise: str = ""
    """``host:port`` peers reach this daemon at (its TCP listener); empty: ``daemon.tcp``. Its host is
    also where the node parts of this daemon's multi-node jobs meet (``torch.distributed``'s rendezvous)."""
    peers: list[str] = field(default_factory=list)
    """The other daemons' ``host:port``."""
    secret_file: str = ""
    """The cluster's shared secret (one line, at least 32 characters); owned by root, mode 0600."""
    tls_cert: str = ""
    """PEM certificate of this daemon's TCP listener; with ``tls_key``, TCP speaks TLS (users too)."""
    tls_key: str = ""
    tls_ca: str = ""
    """PEM CA bundle peers' certificates are checked against; set: peer requests go over https."""
    heartbeat_s: float = 2.0
    """How often this daemon tells every peer it is alive (and what it has free)."""
    down_after_s: float = 10.0
    """A peer not heard from for this long is down: its parts' jobs fail, their leases are freed."""
    lease_ttl_s: float = 15.0
    """How long a lease on this node's GPUs and CPU slots lives without its coordinator renewing it."""
    replay_window_s: float = 30.0
    """A signed request whose timestamp is further than this from now is refused; nonces are kept as long."""

    @property
    def enabled(self) -> bool:
        return bool(self.secret_file)


@dataclass
class Config:
    daemon: DaemonSection = field(default_factory=DaemonSection)
    node: NodeSection = field(default_factory=NodeSection)
    limits: Limits = field(default_factory=Limits)
    federation: FederationSection = field(default_factory=FederationSection)
    personal: bool = False
    """Set by ``dvlad --user``, never by a file: the daemon is its owner's alone, on every path (its
    socket, who may call it), whoever started it, root included (:func:`dvlad.server.auth.sole_user`)."""

    @property
    def cpu_slots(self) -> int:
        """The node's CPU slots: ``node.cpu_slots``, else its cores × ``node.cpu_oversubscribe``."""
        return self.node.cpu_slots or _cores() * (self.node.cpu_oversubscribe or 1)

    @property
    def cpu_slots_origin(self) -> str:
        """Where :attr:`cpu_slots` comes from, in the words of the settings that change it (for the
        refusal of a job bigger than the node, and ``dvlad --check-config``)."""
        if self.node.cpu_slots:
            return "node.cpu_slots"
        return f"{_count(_cores(), 'core')} × node.cpu_oversubscribe = {self.node.cpu_oversubscribe or 1}"


def _cores() -> int:
    return os.cpu_count() or 1


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def job_cpu_slots(workers: int) -> int:
    """The CPU slots a job of ``workers`` env workers takes: one per worker (see
    :data:`PERSONAL_OVERSUBSCRIBE` for why the actor and learner are not counted)."""
    return workers


def _section(cls: Any, table: Any, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(prefix, f"expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in hints:
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(hints)})")
        kind = hints[key]
        if typing.get_origin(kind) is list:  # a list of strings (federation.peers)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{prefix}.{key}", "expected a list of strings")
            values[key] = value
            continue
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{prefix}.{key}", f"expected {kind.__name__}, got {type(value).__name__}")
        values[key] = value
    return cls(**values)


def _limit(table: Any, prefix: str) -> Limit:
    if not isinstance(table, dict):
        raise ConfigError(prefix, f"expected a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in ("gpus", "running_jobs"):
            raise ConfigError(f"{prefix}.{key}", "unknown key (known: gpus, running_jobs)")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{prefix}.{key}", f"expected an integer ≥ 0, got {value!r}")
    return Limit(**table)


def _limits(table: Any) -> Limits:
    if not isinstance(table, dict):
        raise ConfigError("limits", "expected a table")
    unknown = set(table) - {"default", "users", "groups"}
    if unknown:
        raise ConfigError(f"limits.{sorted(unknown)[0]}", "unknown key (known: default, users, groups)")
    named = {}
    for kind in ("users", "groups"):
        entries = table.get(kind, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"limits.{kind}", "expected a table of names")
        named[kind] = {name: _limit(v, f"limits.{kind}.{name}") for name, v in entries.items()}
    return Limits(_limit(table.get("default", {}), "limits.default"), named["users"], named["groups"])


SECTIONS = ("daemon", "node", "limits", "federation")
"""The tables a config file may have (``Config.personal`` is the command line's, not a file's)."""


def config_from_dict(data: dict[str, Any]) -> Config:
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"unknown section (known: {', '.join(SECTIONS)})")
    config = Config(_section(DaemonSection, data.get("daemon", {}), "daemon"),
                    _section(NodeSection, data.get("node", {}), "node"),
                    _limits(data.get("limits", {})),
                    _section(FederationSection, data.get("federation", {}), "federation"))
    if config.daemon.cancel_grace_s < 0:
        raise ConfigError("daemon.cancel_grace_s", "must be ≥ 0")
    if config.daemon.max_body_bytes < 1024:
        raise ConfigError("daemon.max_body_bytes", "must be at least 1024")
    if config.daemon.max_upload_bytes < 0:
        raise ConfigError("daemon.max_upload_bytes", "must be ≥ 0")
    for key in ("header_timeout_s", "body_timeout_s", "max_tcp_connections", "max_tcp_unauthenticated"):
        if getattr(config.daemon, key) <= 0:
            raise ConfigError(f"daemon.{key}", "must be > 0")
    if config.node.cpu_slots < 0:
        raise ConfigError("node.cpu_slots", "must be ≥ 0")
    if config.node.cpu_oversubscribe < 0:
        raise ConfigError("node.cpu_oversubscribe", "must be ≥ 0")
    _check_federation(config.federation)
    return config


def _host_port(key: str, value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(key, f"expected host:port, got {value!r}")


def _check_federation(fed: FederationSection) -> None:
    for key in ("heartbeat_s", "down_after_s", "lease_ttl_s", "replay_window_s"):
        if getattr(fed, key) <= 0:
            raise ConfigError(f"federation.{key}", "must be > 0")
    if fed.down_after_s <= fed.heartbeat_s:
        raise ConfigError("federation.down_after_s", f"must be more than heartbeat_s ({fed.heartbeat_s})")
    if fed.lease_ttl_s <= fed.heartbeat_s:
        raise ConfigError("federation.lease_ttl_s", f"must be more than heartbeat_s ({fed.heartbeat_s}): "
                          "leases are renewed every heartbeat")
    if fed.advertise:
        _host_port("federation.advertise", fed.advertise)
    for i, peer in enumerate(fed.peers):
        _host_port(f"federation.peers[{i}]", peer)
    if bool(fed.tls_cert) != bool(fed.tls_key):
        raise ConfigError("federation.tls_key", "tls_cert and tls_key go together")
    if (fed.peers or fed.tls_cert) and not fed.secret_file:
        raise ConfigError("federation.secret_file", "federation needs the cluster's secret file")


def load_config(path: Path | None) -> Config:
    """``path``, or all defaults for None (which file, if any, is the caller's choice: ``dvlad --user``
    must not read the system's)."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("", f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(data)
