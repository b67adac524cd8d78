"""The asyncio SDK: :class:`AsyncClient` and :class:`AsyncJob`, the same calls as :mod:`dvla.client`
awaited, for programs that already run an event loop (a notebook, an async web service) and want
many jobs' requests in flight at once without a thread each.

Requests and replies are built and read by :mod:`dvla.api`, exactly as for the sync client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from dvla import api
from dvla import spec as specs
from dvla.config import Endpoint, resolve
from dvla.errors import DvlaError, JobFailed
from dvla.tarball import safe_extract, tar_chunks


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class AsyncClient:
    """A connection to dvlad for asyncio code; see :class:`dvla.client.Client` for every method.
    Use ``async with AsyncClient() as c:``, or ``await c.aclose()``."""

    def __init__(self, host: str | None = None, token: str | None = None):
        self.endpoint: Endpoint = resolve(host, token)
        self.reached = False
        """As :attr:`dvla.client.Client.reached`."""
        transport = httpx.AsyncHTTPTransport(uds=self.endpoint.uds) if self.endpoint.uds else None
        self._http = httpx.AsyncClient(base_url=self.endpoint.url, transport=transport, timeout=api.TIMEOUT,
                                       headers=api.headers(self.endpoint), event_hooks={"response": [self._answered]})

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _answered(self, response: httpx.Response) -> None:
        self.reached = True

    async def _call(self, req: api.Request) -> Any:
        try:
            response = await self._http.request(req.method, req.path, params=req.params, json=req.json)
        except httpx.TransportError as exc:
            raise api.transport_error(self.endpoint, exc) from None
        return api.decode(response)

    @contextlib.asynccontextmanager
    async def _stream(self, req: api.Request) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http.stream(req.method, req.path, params=req.params,
                                         timeout=api.STREAM_TIMEOUT) as response:
                if response.status_code >= 400:
                    await response.aread()
                    api.decode(response)
                yield response
        except httpx.TransportError as exc:
            raise api.transport_error(self.endpoint, exc) from None

    async def submit(self, spec: api.SpecLike, *, priority: int = 0, idempotency_key: str | None = None) -> AsyncJob:
        data, local = api.prepared(spec)  # as Client.submit: relative paths resolved, a local checkpoint uploaded
        if local is not None and not self.endpoint.is_local:
            data["policy"]["checkpoint"] = await self.upload(local)
        reply = await self._call(api.submit(data, priority, idempotency_key))
        return AsyncJob(self, reply["job"]["id"], reply["job"])

    async def train(self, policy: str | os.PathLike[str] | Mapping[str, Any],
                    env: str | Mapping[str, Any] | specs.EnvSection,
                    algo: str | Mapping[str, Any] = "ppo", steps: int | None = None, gpus: int = 0, *,
                    priority: int = 0, idempotency_key: str | None = None, **sections: Mapping[str, Any]) -> AsyncJob:
        section, _ = api.policy_section(policy)  # a local checkpoint: submit uploads it to a remote daemon
        return await self.submit(api.train_spec(section, env, algo, steps, gpus, sections), priority=priority,
                                 idempotency_key=idempotency_key)

    async def jobs(self, all: bool = False, user: str | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
        return (await self._call(api.jobs(all, user, limit)))["jobs"]

    async def job(self, job_id: int) -> dict[str, Any]:
        return await self._call(api.job(job_id))

    async def handle(self, job_id: int) -> AsyncJob:
        return AsyncJob(self, job_id, await self.job(job_id))

    async def cancel(self, job_id: int) -> dict[str, Any]:
        return await self._call(api.cancel(job_id))

    async def logs(self, job_id: int, *, offset: int = 0) -> str:
        return await self._call(api.logs(job_id, offset, follow=False))

    async def follow_logs(self, job_id: int, *, offset: int = 0) -> AsyncIterator[str]:
        cursor, outage = api.LogCursor(offset), api.Outage(self.reached)
        while True:
            try:
                async with self._stream(api.logs(job_id, cursor.offset, follow=True)) as response:
                    outage.over()
                    async for chunk in response.aiter_bytes():
                        for line in cursor.feed(chunk):
                            yield line
                for line in cursor.end():
                    yield line
                return
            except DvlaError as exc:
                outage.ride_out(exc)
                await asyncio.sleep(api.RECONNECT_EVERY_S)

    async def metrics(self, job_id: int, last: int = 0) -> list[dict[str, Any]]:
        return (await self._call(api.metrics(job_id, last)))["rows"]

    async def events(self, after: int = 0) -> list[dict[str, Any]]:
        return (await self._call(api.events(after, follow=False)))["events"]

    async def follow_events(self, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        async with self._stream(api.events(after, follow=True)) as response:
            async for line in response.aiter_lines():
                if line:
                    yield json.loads(line)

    async def checkpoint(self, job_id: int, dest_dir: str | os.PathLike[str]) -> list[Path]:
        dest = Path(dest_dir)  # made by safe_extract, once there is a checkpoint to put there
        with tempfile.TemporaryFile() as spool:
            async with self._stream(api.checkpoint(job_id)) as response:
                async for chunk in response.aiter_bytes():
                    spool.write(chunk)
            spool.seek(0)
            return [dest / name for name in safe_extract(spool, dest)]

    async def upload(self, path: str | os.PathLike[str]) -> str:
        file = Path(path)
        try:
            response = await self._http.post("/v1/uploads", content=_aiter(tar_chunks([(file.name, file)])),
                                             headers={"Content-Type": api.TAR}, timeout=api.STREAM_TIMEOUT)
        except httpx.TransportError as exc:
            raise api.transport_error(self.endpoint, exc) from None
        return f"{api.decode(response)['path']}/{file.name}"

    async def nodes(self) -> list[dict[str, Any]]:
        return (await self._call(api.NODES))["nodes"]

    async def topology(self) -> dict[str, Any]:
        return await self._call(api.TOPOLOGY)

    async def gpus(self) -> dict[str, Any]:
        return await self._call(api.GPUS)


class AsyncJob:
    """A handle on one job for asyncio code; see :class:`dvla.client.Job`."""

    def __init__(self, client: AsyncClient, job_id: int, record: dict[str, Any] | None = None):
        self.client, self.id, self.record = client, job_id, record or {}

    def __repr__(self) -> str:
        return f"AsyncJob({self.id}, {self.record.get('state', '?')})"

    async def refresh(self) -> dict[str, Any]:
        self.record = await self.client.job(self.id)
        return self.record

    async def status(self) -> str:
        return (await self.refresh())["state"]

    async def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        deadline, outage = None if timeout is None else time.monotonic() + timeout, api.Outage(self.client.reached)
        while True:
            try:
                if await self.status() in api.TERMINAL:
                    break
                outage.over()
            except DvlaError as exc:  # a daemon restart: the job runs on
                outage.ride_out(exc)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still {self.record['state']} after {timeout} s")
            await asyncio.sleep(poll)
        if self.record["state"] != "succeeded":
            raise JobFailed(self.record)
        return self.record

    async def pending(self, poll: float = 0.5) -> AsyncIterator[str]:
        """While the job is queued, why it waits, each time that changes (see :meth:`dvla.client.Job.pending`)."""
        last, outage = None, api.Outage(self.client.reached)
        while True:
            try:
                record = await self.refresh()
                outage.over()
            except DvlaError as exc:
                outage.ride_out(exc)
                await asyncio.sleep(poll)
                continue
            if record["state"] != "queued":
                return
            reason = record.get("pending_reason")  # None: no scheduling pass has seen it yet
            if reason and reason != last:
                last = reason
                yield reason
            await asyncio.sleep(poll)

    def logs(self) -> AsyncIterator[str]:
        """The log's lines as they are written, until the job ends."""
        return self.client.follow_logs(self.id)

    async def metrics(self, last: int = 0) -> list[dict[str, Any]]:
        return await self.client.metrics(self.id, last)

    async def cancel(self) -> dict[str, Any]:
        self.record = await self.client.cancel(self.id)
        return self.record

    async def checkpoint(self, dest_dir: str | os.PathLike[str]) -> list[Path]:
        return await self.client.checkpoint(self.id, dest_dir)
