"""``dvlad``: the entry point. Reads the config, sets up the app (which opens the store and schedules),
listens, and waits for a signal.

Stopping dvlad (SIGTERM) leaves running jobs running: the next dvlad re-adopts them, so an upgrade
or a crash never kills a user's training.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import ssl
import stat
import sys
from pathlib import Path

from aiohttp import web

from dvlad.config import DEFAULT_CONFIG, PERSONAL_OVERSUBSCRIBE, Config, ConfigError, DaemonSection, load_config
from dvlad.server.auth import sole_user
from dvlad.server.connections import GUARD, GuardedTCPSite, raise_file_limit

log = logging.getLogger("dvlad")
LINGER_S = 1.0
"""How long the rest of a refused body is read (and dropped) so the client sees the reply."""
LISTEN_BACKLOG = 4096
"""Connections a listener holds before dvlad accepts them (the kernel caps it at somaxconn). Why not
aiohttp's 128: with 1000 clients connecting together, a local connect that found the Unix socket's
backlog full failed at once (EAGAIN: 'Transport endpoint is not connected'), and a TCP SYN that
found it full was dropped and retried 1, 3, 7, 15 s later (a 15 s request)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvlad", description="The D-VLA daemon: queues jobs and runs them on this "
                                "machine's GPUs as the users who submitted them.")
    p.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_CONFIG} if it exists; with "
                   "--user, none: built-in defaults)")
    p.add_argument("--user", action="store_true", help="a personal daemon: socket $XDG_RUNTIME_DIR/dvlad.sock, "
                   "state ~/.local/state/dvlad, no socket group, "
                   f"{PERSONAL_OVERSUBSCRIBE} CPU slots per core unless node.cpu_oversubscribe says otherwise")
    p.add_argument("--state-dir", type=Path, help="overrides daemon.state_dir")
    p.add_argument("--socket", type=Path, help="overrides daemon.socket")
    p.add_argument("--check-config", action="store_true", help="check the config (and tokens file) and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="the least severe level logged (default info); logs are one JSON object per line on stderr")
    return p


def config_path(args: argparse.Namespace, system: Path = DEFAULT_CONFIG) -> Path | None:
    """The config file to read: ``--config``; else none for ``--user``; else ``system`` if it exists.

    Why a personal daemon skips the system file: it would take the machine's TCP listener, tokens
    and limits, which are the system daemon's."""
    if args.config:
        return args.config
    if args.user or not system.exists():
        return None
    return system


def resolve(args: argparse.Namespace, system: Path = DEFAULT_CONFIG) -> Config:
    """The config chosen by :func:`config_path`, with the command line's overrides applied."""
    config = load_config(config_path(args, system))
    d = config.daemon
    if args.user:
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/dvlad-{os.getuid()}"
        d.socket = str(Path(runtime) / "dvlad.sock")
        d.state_dir = str(Path.home() / ".local/state/dvlad")
        d.socket_group = ""
        config.personal = True
        config.node.cpu_oversubscribe = config.node.cpu_oversubscribe or PERSONAL_OVERSUBSCRIBE
    if args.state_dir:
        d.state_dir = str(args.state_dir)
    if args.socket:
        d.socket = str(args.socket)
    if d.tcp:
        host, _, port = d.tcp.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()):
            raise ConfigError("daemon.tcp", f"expected host:port, got {d.tcp!r}")
    if config.federation.enabled and not d.tcp:
        raise ConfigError("federation.secret_file", "federation needs daemon.tcp: peers talk to each other over TCP")
    advertised = (config.federation.advertise or d.tcp).rpartition(":")[0].strip("[]")
    if config.federation.enabled and advertised in ("", "0.0.0.0", "::"):
        raise ConfigError("federation.advertise", f"daemon.tcp listens on every address ({d.tcp}); set "
                          "federation.advertise to the host:port peers reach this node at")
    return config


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The TCP listener's TLS context when ``federation.tls_cert`` and ``tls_key`` are set; peers are
    checked against ``tls_ca`` by the client side (:mod:`dvlad.fed.client`)."""
    fed = config.federation
    if not fed.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(fed.tls_cert, fed.tls_key)
    return context


def _unlink_stale_socket(path: Path) -> None:
    if path.exists() and stat.S_ISSOCK(path.lstat().st_mode):
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex(str(path)) == 0:
                raise SystemExit(f"dvlad: something already listens on {path}")
        path.unlink()


def private_directory(path: Path) -> None:
    """Make ``path`` (mode 0700), or check that the one there is a directory of this uid's that nobody
    else may enter; raise SystemExit saying what is wrong otherwise.

    Why: a personal daemon's socket sits in it (``/tmp/dvlad-UID`` where ``$XDG_RUNTIME_DIR`` is unset),
    and whoever owns or may write that directory could put their own socket in its place, or reach
    the daemon's; another user may have made ``/tmp/dvlad-0`` before root's daemon started."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()  # never through a symlink: its target is anybody's
    if not stat.S_ISDIR(st.st_mode):
        raise SystemExit(f"dvlad: {path} is not a directory; a personal daemon's socket goes in a directory "
                         "of its own user's, mode 0700: remove it, or set XDG_RUNTIME_DIR or --socket")
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SystemExit(f"dvlad: {path} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; a "
                         f"personal daemon's socket goes only in a directory of its own user's (uid "
                         f"{os.geteuid()}) that nobody else may enter (mode 0700): remove it, or set "
                         "XDG_RUNTIME_DIR or --socket")


def socket_mode(d: DaemonSection, sole: int | None) -> int:
    """The Unix socket's mode: the owner's alone where dvlad serves one user (:func:`sole_user`);
    else identity comes from peer credentials and jobs run as their callers, so the socket group
    gates access (no group: any local user)."""
    return 0o600 if sole is not None else 0o660 if d.socket_group else 0o666


async def _listen(runner: web.AppRunner, config: Config, tls: ssl.SSLContext | None = None) -> Path:
    """Listen on TCP (if configured; over TLS with ``tls``), then on the Unix socket, which gets its mode
    and group (a personal daemon's in a directory of its own: :func:`private_directory`); returns its path."""
    d = config.daemon
    if d.tcp:  # before the Unix socket: once that answers, every listener is up
        host, _, port = d.tcp.rpartition(":")
        await GuardedTCPSite(runner, host, int(port), runner.app[GUARD], backlog=LISTEN_BACKLOG,
                             ssl_context=tls).start()
    sock_path = Path(d.socket)
    if config.personal:
        private_directory(sock_path.parent)
    else:
        sock_path.parent.mkdir(parents=True, exist_ok=True)
    _unlink_stale_socket(sock_path)
    await web.UnixSite(runner, str(sock_path), backlog=LISTEN_BACKLOG).start()
    os.chmod(sock_path, socket_mode(d, sole_user(config.personal)))
    if d.socket_group:
        try:
            os.chown(sock_path, -1, grp.getgrnam(d.socket_group).gr_gid)
        except KeyError:
            log.warning("socket group missing; socket stays root-group", extra={"group": d.socket_group})
    return sock_path


async def serve(config: Config, tokens: dict[str, str]) -> int:
    """Serve until SIGTERM/SIGINT (0) or until a daemon task dies (1, logged: systemd restarts dvlad).

    The app opens what dvlad holds (lock, store, inventory, scheduling loop: :mod:`dvlad.server.lifetime`)
    when the runner is set up, and closes it when the runner is cleaned up, after the listeners."""
    from dvlad.server.app import make_app
    from dvlad.server.lifetime import DAEMON, TASKS
    from dvlad.server.notify import sd_notify

    raise_file_limit()  # before the app sizes its TCP caps on it
    # a short shutdown: open log/event streams must not hold a restart for aiohttp's default minute;
    # aiohttp's keep-alive time-out runs from a connection's start and from each reply until the next
    # request's head is in: it is the head's time-out too (a silent or stalled peer is dropped). After an
    # early reply (413, 408) aiohttp reads what is left of the body for lingering_time before closing: short,
    # or a peer that stalled its body holds the connection 10 s more
    runner = web.AppRunner(make_app(config, tokens), access_log=None, handle_signals=False, shutdown_timeout=2.0,
                           keepalive_timeout=config.daemon.header_timeout_s, lingering_time=LINGER_S)
    try:
        await runner.setup()
        sock_path = await _listen(runner, config, tls_context(config))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        inventory, tasks, guard = runner.app[DAEMON].inventory, runner.app[TASKS], runner.app[GUARD]
        log.info("listening", extra={"socket": str(sock_path), "tcp": config.daemon.tcp or None,
                                     "max_tcp_connections": guard.max_tcp,
                                     "max_tcp_unauthenticated": guard.max_unauthenticated,
                                     "state_dir": config.daemon.state_dir, "gpus": inventory.gpu_indices,
                                     "gpu_source": inventory.source, "cpu_slots": config.cpu_slots,
                                     "pid": os.getpid()})
        sd_notify("READY=1")
        stop_wait = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        sd_notify("STOPPING=1")
        log.info("stopping; running jobs keep running and are re-adopted at the next start")
    finally:
        await runner.cleanup()
    died = [task for task in done if task is not stop_wait]
    for task in died:
        log.critical("a daemon task ended; exiting to be restarted", exc_info=task.exception())
    return 1 if died else 0


def _federation_line(config: Config) -> str:
    fed = config.federation
    if not fed.enabled:
        return "off"
    return (f"{len(fed.peers)} peer(s), advertised at {fed.advertise or config.daemon.tcp}"
            f"{', TLS' if fed.tls_cert else ''}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dvlad.server.auth import load_tokens
    from dvlad.server.logs import setup

    setup(args.log_level)
    try:
        config = resolve(args)
        # checked before serving too: a bad tokens file is a one-line config error, not a traceback
        tokens = load_tokens(Path(config.daemon.tokens_file)) if config.daemon.tcp else {}
        if config.federation.enabled:
            from dvlad.fed.secret import load_secret

            load_secret(Path(config.federation.secret_file))
            tls_context(config)
        if args.check_config:
            print(f"config ok: state_dir {config.daemon.state_dir}, socket {config.daemon.socket}, "
                  f"{config.cpu_slots} CPU slots ({config.cpu_slots_origin}), tcp {config.daemon.tcp or 'off'}, "
                  f"federation {_federation_line(config)}")
            return 0
    except (ConfigError, OSError, ValueError) as err:
        print(f"dvlad: config: {err}", file=sys.stderr)
        return 1
    import uvloop

    return uvloop.run(serve(config, tokens))


if __name__ == "__main__":
    sys.exit(main())
