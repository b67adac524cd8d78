"""Who is calling (peer credentials on the Unix socket, a bearer token on TCP), and which jobs they may
read or cancel.

Why ``SO_PEERCRED``: the kernel says which uid opened the connection, so a user cannot claim to
be someone else by sending a field. Tokens (TCP only) come from a file only root may read and are
compared in constant time (``hmac.compare_digest``) so timing does not leak them. Why the rules live
here, once: every route that shows a job, a job's log or a GPU's holder asks the same question, and
a route that answered it its own way would be the one that leaks another user's job.
"""

from __future__ import annotations

import grp
import hmac
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from dvlad.config import ConfigError, DaemonSection
from dvlad.private_file import read_private_file
from dvlad.server.errors import ApiError
from dvlad.store import Job

_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    user: str
    groups: tuple[str, ...]
    admin: bool
    """Root, a member of ``daemon.admin_group``, or the user dvlad runs as: sees and cancels every job."""
    sees_all: bool
    """May read every user's jobs: an admin, or anyone where ``daemon.users_see_all``."""


def may_read(who: Identity, job: Job) -> bool:
    """Whether ``who`` may see ``job``: its record, log, metrics, checkpoint and name."""
    return job.uid == who.uid or who.sees_all


def may_cancel(who: Identity, job: Job) -> bool:
    """Whether ``who`` may cancel ``job``: its owner or an admin, never everyone (``users_see_all``
    lets users read each other's jobs, not stop them)."""
    return job.uid == who.uid or who.admin


IDENTITY_TTL_S = 30.0
"""How long a uid's name and groups are reused: a change of groups takes effect within this."""
_identities: dict[tuple[int, int | None, str, bool], tuple[float, Identity]] = {}


def identity_of(uid: int, gid: int | None, daemon: DaemonSection) -> Identity:
    """The caller's name, groups and permissions (NSS lookups cached: they cost more than a request)."""
    key = (uid, gid, daemon.admin_group, daemon.users_see_all)
    hit = _identities.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < IDENTITY_TTL_S:
        return hit[1]
    identity = _lookup(uid, gid, daemon)
    _identities[key] = (now, identity)
    return identity


def _lookup(uid: int, gid: int | None, daemon: DaemonSection) -> Identity:
    try:
        entry = pwd.getpwuid(uid)
        user, gid = entry.pw_name, entry.pw_gid if gid is None else gid
        gids = os.getgrouplist(user, gid)
    except KeyError:  # a uid without a passwd entry (containers): still a distinct caller
        user, gid, gids = f"uid{uid}", uid if gid is None else gid, [uid if gid is None else gid]
    groups = []
    for g in gids:
        try:
            groups.append(grp.getgrgid(g).gr_name)
        except KeyError:
            groups.append(str(g))
    admin = uid == 0 or daemon.admin_group in groups or uid == os.geteuid()
    return Identity(uid, gid, user, tuple(groups), admin, sees_all=admin or daemon.users_see_all)


def load_tokens(path: Path) -> dict[str, str]:
    """``TOKEN USER`` lines; refuses a file that group or others can read, or that root does not own
    (:func:`~dvlad.private_file.read_private_file`).

    Every problem is a :class:`ConfigError` of one line naming the file (and the line): dvlad prints
    it and exits, as ``--check-config`` does, instead of dying in a traceback."""
    text = read_private_file(path, "tokens file")
    tokens = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise ConfigError("", f"{path}:{number}: expected TOKEN USER, got {len(fields)} field(s)")
        tokens[fields[0]] = fields[1]
    return tokens


def sole_user(personal: bool) -> int | None:
    """The only uid this dvlad serves, or None for every user (a system daemon run by root).

    Its own uid where it is personal (``dvlad --user``, root's too: it is still one user's daemon) or
    not root (it cannot start a job as anyone else). Why root's personal daemon too: a job it accepted
    from another user would run with root's rights or not at all, and its socket is root's alone."""
    euid = os.geteuid()
    return euid if personal or euid != 0 else None


def peer_credentials(request: web.Request) -> tuple[int, int] | None:
    """The uid and gid of a Unix-socket caller (``SO_PEERCRED``: the kernel's word); None on TCP."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid, gid


def refuse_stranger(uid: int, sole: int | None) -> None:
    """Raise 403 unless this dvlad serves ``uid`` (:func:`sole_user`)."""
    if sole is not None and uid != sole:
        raise ApiError(403, "forbidden", f"this dvlad is uid {sole}'s own and serves only that user, not uid {uid}")


def authenticate(request: web.Request, tokens: dict[str, str], daemon: DaemonSection) -> Identity:
    if (peer := peer_credentials(request)) is not None:
        return identity_of(*peer, daemon)
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise ApiError(401, "unauthorized", "TCP callers need an Authorization: Bearer token", field="Authorization")
    given = header[len("Bearer "):].encode()
    user = None
    for token, name in tokens.items():  # every token compared: the time does not say which one matched
        if hmac.compare_digest(token.encode(), given):
            user = name
    if user is None:
        raise ApiError(401, "unauthorized", "unknown token", field="Authorization")
    try:
        return identity_of(pwd.getpwnam(user).pw_uid, None, daemon)
    except KeyError:
        raise ApiError(401, "unauthorized", f"the token's user {user!r} does not exist") from None
