"""Where the SDK finds dvlad: explicit arguments, then the environment, then a config file, then the
local socket.

Why this order: a script's own argument must win; ``DVLA_HOST``/``DVLA_TOKEN`` let one shell point at
another machine without editing files; ``~/.config/dvla/config.toml`` holds a laptop's usual remote
daemon; with nothing set, the local daemon is found where ``dvlad --user`` or the system unit put it.

Addresses: ``unix:///path/dvlad.sock`` or a bare absolute path (a Unix socket, identity from the
kernel), ``http://host:port``, ``https://host:port`` or ``host:port`` (TCP, ``Authorization: Bearer``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dvla.errors import DvlaError

SYSTEM_SOCKET = "/run/dvlad/dvlad.sock"
"""dvlad's ``daemon.socket`` default (the system unit's)."""
FILE_KEYS = ("host", "token")


@dataclass(frozen=True)
class Endpoint:
    """A resolved daemon address. ``uds`` is set for a Unix socket; ``url`` is the HTTP base URL."""

    url: str
    uds: str | None
    token: str | None
    origin: str
    """Where the address came from (an argument, ``$DVLA_HOST``, the config file, the default): for messages."""

    @property
    def where(self) -> str:
        shown = f"unix://{self.uds}" if self.uds else self.url
        return f"{shown} (from {self.origin})"

    @property
    def is_local(self) -> bool:
        """A Unix socket: the daemon shares this machine's files and runs jobs as this very user."""
        return self.uds is not None


def personal_socket(env: Mapping[str, str]) -> Path:
    """Where ``dvlad --user`` listens: ``$XDG_RUNTIME_DIR/dvlad.sock``, or ``/tmp/dvlad-UID`` without it."""
    runtime = env.get("XDG_RUNTIME_DIR") or f"/tmp/dvlad-{os.getuid()}"
    return Path(runtime) / "dvlad.sock"


def config_file(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "dvla" / "config.toml"


def _read_file(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DvlaError(f"{path}: {exc}", code="bad_config") from None
    for key, value in data.items():
        if key not in FILE_KEYS:
            raise DvlaError(f"{path}: unknown key (known: {', '.join(FILE_KEYS)})", code="bad_config", field=key)
        if not isinstance(value, str):
            raise DvlaError(f"{path}: expected a string, got {type(value).__name__}", code="bad_config", field=key)
    return data


def parse_host(host: str, token: str | None, origin: str) -> Endpoint:
    """One address string (see the module doc) as an :class:`Endpoint`."""
    if host.startswith("unix://"):
        return Endpoint("http://dvlad", host[len("unix://"):], None, origin)
    if host.startswith("/"):
        return Endpoint("http://dvlad", host, None, origin)
    url = host if host.startswith(("http://", "https://")) else f"http://{host}"
    return Endpoint(url.rstrip("/"), None, token, origin)


def resolve(host: str | None = None, token: str | None = None, env: Mapping[str, str] | None = None) -> Endpoint:
    """The daemon to talk to: ``host``/``token`` > ``$DVLA_HOST``/``$DVLA_TOKEN`` > the config file >
    the personal socket if it exists > the system socket."""
    env = os.environ if env is None else env
    path = config_file(env)
    stored = _read_file(path)
    token = token or env.get("DVLA_TOKEN") or stored.get("token")
    if host:
        return parse_host(host, token, "the host argument")
    if env.get("DVLA_HOST"):
        return parse_host(env["DVLA_HOST"], token, "$DVLA_HOST")
    if stored.get("host"):
        return parse_host(stored["host"], token, str(path))
    personal = personal_socket(env)
    if personal.exists():
        return parse_host(str(personal), token, "the personal daemon's socket")
    return parse_host(SYSTEM_SOCKET, token, "the default")
