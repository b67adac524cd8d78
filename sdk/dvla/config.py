"""Where the SDK finds dvlad: explicit arguments, then the environment, then a config file, then the
local socket.

Why this order: a script's own argument must win; ``DVLA_HOST``/``DVLA_TOKEN`` let one shell point at
another machine without editing files; ``~/.config/dvla/config.toml`` holds a laptop's usual remote
daemon; with nothing set, the local daemon is found where ``dvlad --user`` or the system unit put it.

Addresses: ``unix:///path/dvlad.sock`` or a path (a Unix socket, identity from the kernel): a value
without ``scheme://`` that contains ``/`` or ends in ``.sock`` (``/run/dvlad/dvlad.sock``,
``./dvlad.sock``, ``dvlad.sock``, ``~/dvlad.sock``; a relative one is taken from the current
directory); else TCP (``Authorization: Bearer``): ``host:port``, ``http://host:port``,
``https://host:port``. A bare ``host`` is refused: dvlad has no customary port (its ``daemon.tcp``
setting names one), and HTTP's 80 would be a guess; ``http(s)://host`` without a port does mean the
scheme's, as for a TLS proxy in front of dvlad.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


ADDRESS_FORMS = ("a socket's path (/path/dvlad.sock, ./dvlad.sock, dvlad.sock), unix:///path/dvlad.sock, "
                 "host:port, http://host:port or https://host:port")
_HOST_PORT = re.compile(r"[^/]*:[0-9]*")
"""``host:port`` (or ``host:``) before a first ``/``: a TCP address with a path after it, not a file."""


def _bad_address(host: str, origin: str, why: str) -> DvlaError:
    return DvlaError(f"bad daemon address {host!r} (from {origin}): {why}; expected {ADDRESS_FORMS}",
                     code="bad_config")


def _tcp_url(host: str, origin: str) -> str:
    """``host`` as an http(s) base URL, checked here so that a typo is one clear line, not a traceback
    from the HTTP library or a connection error that blames an address nobody meant."""
    try:
        parts = urlsplit(host if "://" in host else f"http://{host}")
        port = "" if parts.port is None else f":{parts.port}"  # raises unless a number in 0-65535
    except ValueError as exc:
        raise _bad_address(host, origin, str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise _bad_address(host, origin, f"unknown scheme {parts.scheme!r}")
    if not parts.hostname:
        raise _bad_address(host, origin, "no host name")
    if parts.username is not None:
        raise _bad_address(host, origin, "dvlad takes a token (--token, $DVLA_TOKEN), not user:password@")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise _bad_address(host, origin, "nothing may follow host:port")
    if parts.port is None and "://" not in host:
        raise _bad_address(host, origin, "no port: write host:port with the port of the daemon's daemon.tcp "
                                         "setting (e.g. gpu1.lab:7447); a socket's path contains '/' or ends in .sock")
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6 keeps its brackets
    return f"{parts.scheme}://{name}{port}"


def names_a_path(host: str) -> bool:
    """Whether ``host`` is a Unix socket's path rather than a TCP address: no ``scheme://``, and it
    contains ``/`` (unless ``host:port`` comes before it) or ends in ``.sock``."""
    if "://" in host:
        return False
    if host.startswith(("/", "./", "../", "~")):
        return True
    if "/" in host:
        return not _HOST_PORT.fullmatch(host.split("/", 1)[0])
    return host.endswith(".sock")


def parse_host(host: str, token: str | None, origin: str) -> Endpoint:
    """One address string (see the module doc) as an :class:`Endpoint`; a bad one is a DvlaError
    (``bad_config``: the CLI exits 2) that names it and where it came from."""
    if host.startswith("unix://"):
        path = host[len("unix://"):]
        if not path.startswith("/"):
            raise _bad_address(host, origin, "a Unix socket's path must be absolute")
        return Endpoint("http://dvlad", path, None, origin)
    if names_a_path(host):  # relative: the current directory's, made absolute so messages say where
        return Endpoint("http://dvlad", os.path.abspath(Path(host).expanduser()), None, origin)
    return Endpoint(_tcp_url(host, origin), None, token, origin)


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
