"""What each SDK call asks of dvlad, and how its reply is read, with no I/O.

Why apart from the clients: :class:`~dvla.client.Client` and :class:`~dvla.aclient.AsyncClient` send the
same requests and read the same replies; only *how* they wait differs. Each builds a :class:`Request`
here and hands the reply to :func:`decode`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dvla import spec as specs
from dvla.admission import admit, admit_file
from dvla.catalog import POLICIES
from dvla.checkpoint import checkpoint_file, policy_of
from dvla.config import Endpoint
from dvla.errors import DaemonUnavailable, DvlaError, InvalidSpec, error_from_reply

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
"""States a job never leaves."""
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=None)
"""Follows wait as long as the job runs: no read timeout."""
TAR = "application/x-tar"
PRIORITIES = (-1000, 1000)
"""The lowest and highest priority dvlad accepts (it refuses others, 400 ``bad_field``)."""
JOBS_PAGE = (100, 1000)
"""Job records in one listing: when no limit is given, and at most (dvlad refuses more, 400 ``bad_query``)."""
SpecLike = Mapping[str, Any] | specs.JobSpec | str | os.PathLike[str]
"""A spec dict, a :class:`~dvla.spec.JobSpec`, or the path of a TOML job file."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None


def headers(endpoint: Endpoint) -> dict[str, str]:
    base = {"Accept": "application/json", "User-Agent": "dvla-sdk"}
    return {**base, "Authorization": f"Bearer {endpoint.token}"} if endpoint.token and not endpoint.uds else base


def decode(response: httpx.Response) -> Any:
    """The reply's JSON, or the typed exception of an error reply. (Streams: read the body first.)"""
    kind = response.headers.get("Content-Type", "")
    body: Any = response.json() if kind.startswith("application/json") else response.text
    if response.status_code >= 400:
        raise error_from_reply(response.status_code, body)
    return body


RECONNECT_S = 60.0
"""How long following a job (its log, its state) rides out a daemon that went away: a restart of
dvlad takes seconds and leaves the job running, so a follower should not report it as failed."""
RECONNECT_EVERY_S = 1.0


class Outage:
    """The daemon became unreachable while a job was being followed: how long ago, and whether to
    keep trying (:data:`RECONNECT_S`).

    Only a daemon that has answered (``reached``: this client's earlier calls, or this follow itself)
    is waited for. One never reached is not restarting: nothing is there, or the address is wrong, and
    the follower says so at once, with where it looked, instead of after a minute of retries."""

    def __init__(self, reached: bool) -> None:
        self.reached = reached
        self.since: float | None = None

    def ride_out(self, error: DvlaError) -> None:
        """Return if following should try again; re-raise ``error`` if it is not the daemon going away
        (an error reply), the daemon was never reached, or it has been away too long."""
        if not self.reached or not (isinstance(error, DaemonUnavailable) or error.code == "transport"):
            raise error
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since > RECONNECT_S:
            raise error

    def over(self) -> None:
        """The daemon answered."""
        self.reached, self.since = True, None


class LogCursor:
    """A followed log's bytes cut into lines, counting the bytes of the lines handed out, so a stream
    that drops resumes from exactly the next line: none lost, none twice."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        """The lines ``chunk`` completes."""
        *whole, self._pending = (self._pending + chunk).split(b"\n")
        self.offset += sum(len(line) + 1 for line in whole)
        return [text for line in whole for text in line.decode(errors="replace").splitlines() or [""]]

    def end(self) -> list[str]:
        """At the stream's end (the job ended): its last line, if it had no newline."""
        rest, self._pending = self._pending, b""
        self.offset += len(rest)
        return rest.decode(errors="replace").splitlines()


def transport_error(endpoint: Endpoint, exc: httpx.TransportError) -> DvlaError:
    """A failure below HTTP: nothing listening is :class:`DaemonUnavailable`, the rest a plain error."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return DaemonUnavailable(endpoint.where, str(exc) or type(exc).__name__)
    return DvlaError(f"talking to dvlad at {endpoint.where}: {exc or type(exc).__name__}", code="transport")


# -- specs -------------------------------------------------------------------------------------


def _checked(build: Any, *args: Any) -> Any:
    try:
        return build(*args)
    except specs.SpecError as err:
        issues = [{"field": f"spec.{i.key}" if i.key else "spec", "reason": str(i)} for i in err.issues]
        raise InvalidSpec(str(err), issues=issues, field=issues[0]["field"], status=None) from None


def prepared(spec: SpecLike) -> tuple[dict[str, Any], Path | None]:
    """The spec as the daemon takes it, checked here first as the daemon checks it (:mod:`dvla.admission`:
    a bad file fails before any network), with its relative paths resolved (a file's against its folder,
    a dict's against the current directory), and its local checkpoint file if it names one (to upload to
    a remote daemon)."""
    if isinstance(spec, str | os.PathLike):
        checked, local = _checked(admit_file, spec)
    else:
        raw = specs.spec_to_dict(spec) if isinstance(spec, specs.JobSpec) else dict(spec)
        checked, local = _checked(admit, raw, Path.cwd())
    return specs.spec_to_dict(checked), local


def spec_dict(spec: SpecLike) -> dict[str, Any]:
    """:func:`prepared`'s spec alone."""
    return prepared(spec)[0]


def policy_section(policy: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """``[policy]`` for a built-in name, a ``package.module:factory``, a local checkpoint (a path) or a
    section dict. Returns the section and the local checkpoint file if there is one.

    For a checkpoint path the section is the one of the job that wrote it; a dict's ``checkpoint`` is
    local when it exists here. The client references a local file (a local daemon) or uploads it."""
    if isinstance(policy, Mapping):
        section = dict(policy)
        if section.get("checkpoint") and Path(section["checkpoint"]).expanduser().exists():
            file = checkpoint_file(section["checkpoint"])
            return {**section, "checkpoint": str(file)}, file
        return section, None
    if isinstance(policy, os.PathLike) or _names_a_path(policy):
        file = checkpoint_file(policy)
        return policy_of(file), file
    return {"name": policy}, None


def _names_a_path(policy: str) -> bool:
    """A string is a checkpoint path unless it is a policy's name: a built-in one (even where a
    directory of that name happens to exist) or a ``package.module:factory``."""
    if policy in POLICIES or ":" in policy:
        return False
    return "/" in policy or Path(policy).exists()


def train_spec(policy: dict[str, Any], env: str | Mapping[str, Any] | specs.EnvSection, algo: str | Mapping[str, Any],
               steps: int | None, gpus: int, sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The spec :meth:`Client.train` submits: its arguments, then ``sections`` key by key on top."""
    if isinstance(env, specs.EnvSection):
        env = dataclasses.asdict(env)
    data: dict[str, dict[str, Any]] = {
        "policy": dict(policy), "env": {"name": env} if isinstance(env, str) else dict(env),
        "algo": {"name": algo} if isinstance(algo, str) else dict(algo), "resources": {"gpus": gpus}}
    if steps is not None:
        data["train"] = {"total_env_steps": steps}
    for name, values in sections.items():
        if not isinstance(values, Mapping):
            raise InvalidSpec(f"expected a dict of [{name}] keys, got {type(values).__name__}", status=None,
                              issues=[{"field": f"spec.{name}", "reason": "expected a table"}], field=f"spec.{name}")
        data.setdefault(name, {}).update(values)
    return spec_dict(data)


# -- requests ----------------------------------------------------------------------------------


def submit(spec: dict[str, Any], priority: int, idempotency_key: str | None) -> Request:
    body: dict[str, Any] = {"spec": spec, "priority": priority}
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    return Request("POST", "/v1/jobs", json=body)


def jobs(all: bool, user: str | None, limit: int | None) -> Request:
    """One ``user``'s jobs are filtered by the daemon, before ``limit`` (its latest N, not those of the
    latest N of everyone's)."""
    params: dict[str, Any] = {"user": user} if user is not None else {"all": "1"} if all else {}
    if limit is not None:
        params["limit"] = limit
    return Request("GET", "/v1/jobs", params=params)


def job(job_id: int) -> Request:
    return Request("GET", f"/v1/jobs/{int(job_id)}")


def cancel(job_id: int) -> Request:
    return Request("POST", f"/v1/jobs/{int(job_id)}/cancel")


def logs(job_id: int, offset: int, follow: bool) -> Request:
    params = {"offset": offset, **({"follow": "1"} if follow else {})}
    return Request("GET", f"/v1/jobs/{int(job_id)}/logs", params=params)


def metrics(job_id: int, last: int) -> Request:
    return Request("GET", f"/v1/jobs/{int(job_id)}/metrics", params={"last": last} if last else None)


def events(after: int, follow: bool) -> Request:
    return Request("GET", "/v1/events", params={"after": after, **({"follow": "1"} if follow else {})})


def checkpoint(job_id: int) -> Request:
    return Request("GET", f"/v1/jobs/{int(job_id)}/checkpoint")


NODES, TOPOLOGY, GPUS = Request("GET", "/v1/nodes"), Request("GET", "/v1/topology"), Request("GET", "/v1/gpus")
