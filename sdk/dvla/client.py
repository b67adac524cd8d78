"""The synchronous SDK: :class:`Client` talks to one dvlad, :class:`Job` is a handle on one of its jobs.

Why httpx: one library gives the Unix-socket and TCP transports, streaming bodies (``logs`` and
``events`` with ``follow``, checkpoint downloads) and the same interface for the async client.

Every method raises a :mod:`dvla.errors` exception on failure, never an HTTP status to decode.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from dvla import api
from dvla import spec as specs
from dvla.config import Endpoint, resolve
from dvla.errors import DvlaError, JobFailed
from dvla.tarball import safe_extract, tar_chunks


class Client:
    """A connection to dvlad. ``host``/``token`` override ``$DVLA_HOST``, ``$DVLA_TOKEN`` and
    ``~/.config/dvla/config.toml`` (see :mod:`dvla.config`). Use as a context manager, or ``close()``."""

    def __init__(self, host: str | None = None, token: str | None = None):
        self.endpoint: Endpoint = resolve(host, token)
        self.reached = False
        """Whether dvlad has answered this client yet: following a job rides out a daemon that went away
        (a restart), not one that was never there (:class:`dvla.api.Outage`)."""
        transport = httpx.HTTPTransport(uds=self.endpoint.uds) if self.endpoint.uds else None
        self._http = httpx.Client(base_url=self.endpoint.url, transport=transport, timeout=api.TIMEOUT,
                                  headers=api.headers(self.endpoint), event_hooks={"response": [self._answered]})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _answered(self, response: httpx.Response) -> None:
        self.reached = True

    def _send(self, req: api.Request) -> httpx.Response:
        try:
            return self._http.request(req.method, req.path, params=req.params, json=req.json)
        except httpx.TransportError as exc:
            raise api.transport_error(self.endpoint, exc) from None

    def _call(self, req: api.Request) -> Any:
        return api.decode(self._send(req))

    @contextlib.contextmanager
    def _stream(self, req: api.Request) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(req.method, req.path, params=req.params, timeout=api.STREAM_TIMEOUT) as response:
                if response.status_code >= 400:
                    response.read()
                    api.decode(response)
                yield response
        except httpx.TransportError as exc:
            raise api.transport_error(self.endpoint, exc) from None

    # -- jobs ----------------------------------------------------------------------------------
    def submit(self, spec: api.SpecLike, *, priority: int = 0, idempotency_key: str | None = None) -> Job:
        """Check ``spec`` here (``InvalidSpec`` with every issue), then submit it; returns its handle.

        Relative paths (``policy.checkpoint``, ...) are a job file's, resolved against its folder (a
        dict's against the current directory); a local checkpoint is referenced by path on a local
        daemon and uploaded to a remote one, as :meth:`train` does (:mod:`dvla.paths`)."""
        data, local = api.prepared(spec)
        if local is not None and not self.endpoint.is_local:
            data["policy"]["checkpoint"] = self.upload(local)
        reply = self._call(api.submit(data, priority, idempotency_key))
        return Job(self, reply["job"]["id"], reply["job"])

    def train(self, policy: str | os.PathLike[str] | Mapping[str, Any],
              env: str | Mapping[str, Any] | specs.EnvSection,
              algo: str | Mapping[str, Any] = "ppo", steps: int | None = None, gpus: int = 0, *,
              priority: int = 0, idempotency_key: str | None = None, **sections: Mapping[str, Any]) -> Job:
        """Train ``policy`` on ``env`` with ``algo`` for ``steps`` env steps on ``gpus`` GPUs.

        ``policy``: a built-in name (``"tiny-vla"``), ``"package.module:factory"``, a local checkpoint
        (a run directory or its ``.safetensors`` file) to start from, or a whole ``[policy]`` dict. A local
        checkpoint is referenced by path on a local daemon (the job runs as you, so your permissions
        apply) and uploaded to a remote one. ``env``: a built-in name, ``package.module:factory``, an
        ``[env]`` dict or an ``EnvSection``. ``algo``: ``"ppo"``/``"grpo"`` or an ``[algo]`` dict.
        ``sections``: the other sections' keys, e.g. ``job={"name": "try1"}, train={"max_minutes": 5}``.
        The spec is checked here first: ``InvalidSpec`` lists every problem before anything is sent."""
        section, _ = api.policy_section(policy)  # a local checkpoint: submit uploads it to a remote daemon
        return self.submit(api.train_spec(section, env, algo, steps, gpus, sections), priority=priority,
                           idempotency_key=idempotency_key)

    def jobs(self, all: bool = False, user: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The latest ``limit`` job records in submit order: yours, or everyone's (``all``), or one
        ``user``'s (another user's need the permission ``all`` needs: admins, or ``users_see_all``)."""
        return self._call(api.jobs(all, user, limit))["jobs"]

    def job(self, job_id: int) -> dict[str, Any]:
        """One job's record with its resolved ``spec`` and its ``events``."""
        return self._call(api.job(job_id))

    def handle(self, job_id: int) -> Job:
        """A :class:`Job` handle on an existing job (checked to exist and be visible)."""
        return Job(self, job_id, self.job(job_id))

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel (queued: at once; running: SIGTERM, then SIGKILL). ``Conflict`` if it already ended."""
        return self._call(api.cancel(job_id))

    def logs(self, job_id: int, *, offset: int = 0) -> str:
        """The job's log (stdout and stderr) so far, from byte ``offset``."""
        return self.log_bytes(job_id, offset=offset).decode(errors="replace")

    def log_bytes(self, job_id: int, *, offset: int = 0) -> bytes:
        """The job's log so far from byte ``offset``, as the bytes the job wrote: what to count the
        next offset in (a log need not be valid UTF-8, so its decoded text may not re-encode to it)."""
        response = self._send(api.logs(job_id, offset, follow=False))
        if response.status_code >= 400:
            api.decode(response)  # raises the reply's error
        return response.content

    def follow_logs(self, job_id: int, *, offset: int = 0) -> Iterator[str]:
        """The job's log line by line as it is written, ending when the job ends. A daemon restart
        meanwhile is ridden out (:data:`dvla.api.RECONNECT_S`): the stream resumes at the next line. A
        daemon this client never reached raises :class:`~dvla.errors.DaemonUnavailable` at once."""
        cursor, outage = api.LogCursor(offset), api.Outage(self.reached)
        while True:
            try:
                with self._stream(api.logs(job_id, cursor.offset, follow=True)) as response:
                    outage.over()
                    for chunk in response.iter_bytes():
                        yield from cursor.feed(chunk)
                yield from cursor.end()
                return
            except DvlaError as exc:
                outage.ride_out(exc)
                time.sleep(api.RECONNECT_EVERY_S)

    def metrics(self, job_id: int, last: int = 0) -> list[dict[str, Any]]:
        """The job's metric rows (one per update; ``last``: only the last N)."""
        return self._call(api.metrics(job_id, last))["rows"]

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        """State transitions with id > ``after`` (your jobs', or everyone's for admins)."""
        return self._call(api.events(after, follow=False))["events"]

    def follow_events(self, after: int = 0) -> Iterator[dict[str, Any]]:
        """Transitions as they happen, without end (break out of the loop to stop)."""
        with self._stream(api.events(after, follow=True)) as response:
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def checkpoint(self, job_id: int, dest_dir: str | os.PathLike[str]) -> list[Path]:
        """Download the job's latest checkpoint into ``dest_dir``; returns the files written."""
        dest = Path(dest_dir)  # made by safe_extract, once there is a checkpoint to put there
        with tempfile.TemporaryFile() as spool:
            with self._stream(api.checkpoint(job_id)) as response:
                for chunk in response.iter_bytes():
                    spool.write(chunk)
            spool.seek(0)
            return [dest / name for name in safe_extract(spool, dest)]

    def upload(self, path: str | os.PathLike[str]) -> str:
        """Send a local file to the daemon; returns its path there (for a spec to reference)."""
        file = Path(path)
        try:
            response = self._http.post("/v1/uploads", content=tar_chunks([(file.name, file)]),
                                       headers={"Content-Type": api.TAR}, timeout=api.STREAM_TIMEOUT)
        except httpx.TransportError as exc:
            raise api.transport_error(self.endpoint, exc) from None
        return f"{api.decode(response)['path']}/{file.name}"

    # -- the machine ---------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Nodes with their GPUs (free or not), CPU slots, running jobs, CPU (``cpu_percent``, ``cpu_count``)
        and RAM (``ram_used``, ``ram_total``)."""
        return self._call(api.NODES)["nodes"]

    def topology(self) -> dict[str, Any]:
        """The GPU topology: ``devices``, ``pairs`` and its ``source`` (NVML or a recording)."""
        return self._call(api.TOPOLOGY)

    def gpus(self) -> dict[str, Any]:
        """Live GPU stats: ``{"source", "host", "gpus": [{index, name, utilization, memory_used, ...,
        "job"}]}``; live fields are None where the node has no NVML (see docs/sdk.md)."""
        return self._call(api.GPUS)


class Job:
    """A handle on one job. ``record`` is its last fetched record (``status()`` refreshes it)."""

    def __init__(self, client: Client, job_id: int, record: dict[str, Any] | None = None):
        self.client, self.id, self.record = client, job_id, record or {}

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.record.get('state', '?')})"

    def refresh(self) -> dict[str, Any]:
        """Fetch the job's record again (with its spec and events) and return it."""
        self.record = self.client.job(self.id)
        return self.record

    def status(self) -> str:
        """The job's state now: queued, placing, running, cancelling, succeeded, failed or cancelled."""
        return self.refresh()["state"]

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Block until the job ends; return its final record. ``JobFailed`` (with the daemon's reason)
        if it failed or was cancelled, ``TimeoutError`` after ``timeout`` seconds."""
        deadline, outage = None if timeout is None else time.monotonic() + timeout, api.Outage(self.client.reached)
        while True:
            try:
                if self.status() in api.TERMINAL:
                    break
                outage.over()
            except DvlaError as exc:  # a daemon restart: the job runs on
                outage.ride_out(exc)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still {self.record['state']} after {timeout} s")
            time.sleep(poll)
        if self.record["state"] != "succeeded":
            raise JobFailed(self.record)
        return self.record

    def pending(self, poll: float = 0.5) -> Iterator[str]:
        """While the job is queued, why it waits (its ``pending_reason``: resources, priority, a user's or
        group's limit), each time that changes; ends once the job has left the queue (started, or
        cancelled before it could). A daemon restart meanwhile is ridden out, as :meth:`wait` does."""
        last, outage = None, api.Outage(self.client.reached)
        while True:
            try:
                record = self.refresh()
                outage.over()
            except DvlaError as exc:
                outage.ride_out(exc)
                time.sleep(poll)
                continue
            if record["state"] != "queued":
                return
            reason = record.get("pending_reason")  # None: no scheduling pass has seen it yet
            if reason and reason != last:
                last = reason
                yield reason
            time.sleep(poll)

    def logs(self, follow: bool = True) -> Iterator[str]:
        """The log's lines: as they come until the job ends (``follow``), or those written so far."""
        if follow:
            return self.client.follow_logs(self.id)
        return iter(self.client.logs(self.id).splitlines())

    def metrics(self, last: int = 0) -> list[dict[str, Any]]:
        return self.client.metrics(self.id, last)

    def cancel(self) -> dict[str, Any]:
        self.record = self.client.cancel(self.id)
        return self.record

    def checkpoint(self, dest_dir: str | os.PathLike[str]) -> list[Path]:
        return self.client.checkpoint(self.id, dest_dir)
