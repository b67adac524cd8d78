"""Supervising the jobs' processes: exits, cancels, and re-adoption after a daemon restart.

Every tracked job is polled (children with ``Popen.poll``, which also reaps them; jobs adopted after
a restart, which are not our children, by pid + start time, so a recycled pid is never mistaken for
the job). The outcome comes from the exit status and the job's own ``summary.json``. Whatever the
job left in ``/dev/shm`` is removed once it has ended, and at start for jobs that are gone
(:mod:`dvlad.segments`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvla import stops
from dvla.memsize import describe_pools
from dvla.spec import spec_from_dict
from dvlad.exits import signal_name
from dvlad.gpu.layout import plan_layout
from dvlad.runtime.jobfiles import open_job_file, read_job_file
from dvlad.runtime.launch import log_path, process_start, recorded_pid, run_dir, segment_prefix, spawn
from dvlad.runtime.oom import cgroup_of, oom_killed, oom_kills
from dvlad.segments import Segments, daemon_tag, jobs_with_segments, reclaim
from dvlad.sharing.base import MANIFEST_ENV
from dvlad.sharing.holders import BaseHolders
from dvlad.store import IllegalTransition, Job, State, Store

log = logging.getLogger("dvlad")
POLL_S = 0.2
SUMMARY_MAX = 1 << 20
"""Bytes of a job's summary.json read at most (it is a few hundred; the user could make it endless)."""


@dataclass
class Tracked:
    job_id: int
    pid: int
    create_time: float
    popen: subprocess.Popen | None
    """None for a job adopted after a restart: not our child, so polled by pid + start time."""
    term_sent_at: float | None = None
    killed: bool = False
    cgroup: Path | None = None
    """The job's own cgroup (None where it shares dvlad's), whose ``oom_kill`` counter ..."""
    oom_kills_at_start: int | None = None
    """... was this when the job started (:mod:`dvlad.runtime.oom`)."""

    @classmethod
    def started(cls, job_id: int, pid: int, create_time: float, popen: subprocess.Popen | None) -> Tracked:
        own = cgroup_of(pid)
        own = None if own == cgroup_of(os.getpid()) else own
        return cls(job_id, pid, create_time, popen, cgroup=own, oom_kills_at_start=oom_kills(own))


OOM = "killed by the kernel's OOM killer (memory)"
_PIDS = re.compile(r"\(pid (\d+)\)")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the job leads its own session: its pgid is its pid


def last_log_line(path: Path) -> str:
    """The log's last non-empty line (a traceback's last line names the error), at most 300 characters."""
    try:
        with open_job_file(path) as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def outcome(job: Job, exit_code: int | None, summary: dict, log_tail: str = "",
            oom: bool = False) -> tuple[State, str]:
    """The final state and reason of a job whose process ended (exit_code None: unknown, adopted);
    ``log_tail``, the log's last line, is the reason when nothing better says why; ``oom``: there is
    evidence that the OOM killer killed the job or one of its processes."""
    status = summary.get("status")
    finished = status == "succeeded" and exit_code in (0, None)
    if finished:  # which limit stopped it, and how far its budget got: "reached its success target: ..."
        return State.SUCCEEDED, stops.describe(summary)[:300] + describe_pools(summary)
    if job.state is State.CANCELLING:
        return State.CANCELLED, job.reason
    if exit_code is not None and exit_code < 0:
        killed = f"signal {signal_name(-exit_code)}"
        return State.FAILED, f"{OOM} ({killed})" if oom else f"killed by {killed}"
    if exit_code == 2:
        return State.FAILED, f"the job runner refused the spec (exit 2): {log_tail}"
    if status == "failed":  # the job's own reason: its state says failed ("job 10 failed: job failed: ..." before)
        return State.FAILED, str(summary.get("reason", "no reason given")) + f" ({OOM})" * oom
    if status == "stopped":
        sent = "SIGINT" if summary.get("stop_reason") == stops.INTERRUPTED else "SIGTERM"
        got = stops.progress(summary)
        return State.FAILED, f"stopped by a {sent} that did not come from dvlad" + (f" ({got})" if got else "")
    if exit_code is None:
        return State.FAILED, "its process ended while dvlad was down, leaving no summary"
    return State.FAILED, f"exited with status {exit_code}: {log_tail or 'nothing in the log'}"


class Supervisor:
    def __init__(self, store: Store, state_dir: Path, grace_s: float, on_change: Callable[[], None],
                 topology: dict[str, Any] | None = None, share_base_group: str = ""):
        self.store, self.state_dir, self.grace_s, self.on_change = store, state_dir, grace_s, on_change
        self.topology = topology
        """The node's GPU topology record: a job on several GPUs is planned over it."""
        self.tracked: dict[int, Tracked] = {}
        self.shm_owner = daemon_tag(state_dir)
        """The tag in the names of this daemon's jobs' ``/dev/shm`` segments."""
        self.bases = BaseHolders(state_dir, self.shm_owner, share_base_group)
        """The holders of the base models that LoRA jobs share (``resources.share_base``)."""
        self.reclaimed = Segments()
        """The ``/dev/shm`` segments (and bytes) of ended jobs removed since dvlad started."""

    def start(self, job: Job, gpu_ids: list[int], extra_env: dict[str, str] | None = None,
              note: str = "") -> Job:
        """Start a job that is ``placing``; it becomes running, or failed with the reason.
        ``extra_env``: what a node part of a multi-node job is told (:mod:`dvlad.fed`); the manifest of
        a shared base is added to it here. ``note`` ends the reason of its running state (which node
        part it is).

        A job on several GPUs is laid out by the planner the job itself will follow
        (:func:`dvlad.gpu.layout.plan_layout`, over the same topology record, handed to the job): the
        plan is logged here, and a layout that cannot run fails the job before it starts.

        A job that shares a ``pretrained`` base whose directory is still being read (as its user, in the
        background: :meth:`BaseHolders.read`) stays placing, and starts here again once it has been."""
        env = dict(extra_env or {})
        try:
            spec = spec_from_dict(job.spec)
            if spec.resources.share_base:
                read = self.bases.read(job, spec)
                if read is not None and not read.done():
                    read.add_done_callback(lambda done: done.cancelled() or self._resume(job.id, gpu_ids, extra_env,
                                                                                         note))
                    return job
                env[MANIFEST_ENV] = str(self.bases.acquire(job, spec, gpu_ids))
            if len(gpu_ids) > 1:
                plan = plan_layout(gpu_ids, self.topology, layout=spec.placement.layout,
                                   learners=spec.placement.learner_gpus, workers=spec.env.workers,
                                   groups=spec.env.groups, fanout=spec.placement.replication_fanout)
                log.info("job layout", extra={"job": job.id, **plan.as_dict()})
            started = spawn(job, gpu_ids, self.state_dir, self.topology, env)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:  # BaseUnreadable is a ValueError
            self.bases.release(job.id)
            return self.store.transition(job.id, State.FAILED, f"could not start: {exc}")
        self.tracked[job.id] = Tracked.started(job.id, started.pid, started.create_time, started.popen)
        return self.store.transition(job.id, State.RUNNING, f"started as pid {started.pid} on "
                                     f"{'GPUs ' + ','.join(map(str, gpu_ids)) if gpu_ids else 'CPU'}{note}",
                                     pid=started.pid, pid_start=started.create_time)

    def _resume(self, job_id: int, gpu_ids: list[int], extra_env: dict[str, str] | None, note: str) -> None:
        """Start a placing job whose base has been read, unless it was cancelled meanwhile."""
        job = self.store.get(job_id)
        if job is not None and job.state is State.PLACING:
            self.start(job, gpu_ids, extra_env, note)
            self.on_change()

    def recover(self) -> None:
        """After a restart: adopt live jobs (pid and start time match), settle the ones that ended;
        then the holders of shared bases that the adopted jobs map (the others are ended)."""
        for job in self.store.list(states=frozenset({State.PLACING, State.RUNNING, State.CANCELLING}),
                                   limit=1 << 30):
            pid, start = job.pid, job.pid_start
            if pid is None:  # dvlad died between starting it and recording it
                pid, start = recorded_pid(self.state_dir, job.id) or (None, None)
            alive = pid is not None and start is not None and process_start(pid) == start
            if alive:
                self.tracked[job.id] = Tracked(job.id, pid, start, None)
                if job.state is State.PLACING:
                    self.store.transition(job.id, State.RUNNING, f"adopted pid {pid} after a dvlad restart",
                                          pid=pid, pid_start=start)
                elif job.state is State.CANCELLING:
                    self.tracked[job.id].term_sent_at = time.monotonic()
                    _signal_group(pid, signal.SIGTERM)
            elif job.state is State.PLACING:
                self.store.transition(job.id, State.FAILED, "dvlad stopped while starting it")
            else:
                self._finish(job, None)
        for job_id in sorted(jobs_with_segments(self.shm_owner) - set(self.tracked)):
            self._reclaim(job_id)
        self.bases.recover(set(self.tracked))

    def _reclaim(self, job_id: int) -> None:
        """Remove what an ended job left in ``/dev/shm``."""
        removed = reclaim(segment_prefix(self.state_dir, job_id))
        if removed.count:
            self.reclaimed += removed
            log.info("reclaimed shared memory of an ended job",
                     extra={"job": job_id, "segments": removed.count, "bytes": removed.bytes})

    def cancel(self, job: Job, by: str) -> Job:
        """Queued: cancelled at once. Running: SIGTERM to its process group now, SIGKILL after the grace."""
        if job.state in (State.QUEUED, State.PLACING):
            return self.store.transition(job.id, State.CANCELLED, f"cancelled by {by} before it started")
        job = self.store.transition(job.id, State.CANCELLING, f"cancelled by {by}")
        self.terminate(job.id)
        return job

    def terminate(self, job_id: int) -> None:
        """SIGTERM to the job's process group now, SIGKILL after the grace (a job whose state is already
        settled elsewhere: a multi-node job failed by its coordinator)."""
        tracked = self.tracked.get(job_id)
        if tracked is not None and tracked.term_sent_at is None:
            tracked.term_sent_at = time.monotonic()
            _signal_group(tracked.pid, signal.SIGTERM)

    def _finish(self, job: Job, exit_code: int | None, tracked: Tracked | None = None) -> None:
        try:  # the job's user controls run/: a bounded read of a regular file, or nothing
            summary = json.loads(read_job_file(run_dir(self.state_dir, job.id) / "summary.json", limit=SUMMARY_MAX))
        except (OSError, ValueError):
            summary = {}
        summary = summary if isinstance(summary, dict) else {}
        state, reason = outcome(job, exit_code, summary, last_log_line(log_path(self.state_dir, job.id)),
                                tracked is not None and self._oom_evidence(tracked, exit_code, summary))
        with contextlib.suppress(IllegalTransition):  # already settled elsewhere: nothing to record
            self.store.transition(job.id, state, reason, exit_code=exit_code)

    @staticmethod
    def _oom_evidence(t: Tracked, exit_code: int | None, summary: dict) -> bool:
        """Whether the OOM killer killed the job's leader, or a process of the job whose end its
        reason gives (``learner (pid N) killed by signal SIGKILL``), by its cgroup's or the kernel's record."""
        reason = str(summary.get("reason", ""))
        if exit_code != -signal.SIGKILL and "SIGKILL" not in reason:
            return False
        return oom_killed({t.pid, *map(int, _PIDS.findall(reason))}, t.cgroup, t.oom_kills_at_start)

    def _settle(self, job_id: int, exit_code: int | None, tracked: Tracked | None = None) -> None:
        """Record how an ended job ended; if working that out raises, fail it with the error.

        Why the fallback: a job left ``running`` in the store holds its GPUs and CPU slots forever."""
        job = self.store.get(job_id)
        if job is None:
            return
        try:
            self._finish(job, exit_code, tracked)
        except Exception as exc:
            log.exception("could not settle an ended job; failing it", extra={"job": job_id})
            with contextlib.suppress(IllegalTransition):
                self.store.transition(job_id, State.FAILED, f"ended, but dvlad could not tell how: {exc}",
                                      exit_code=exit_code)

    def _poll_one(self, t: Tracked) -> bool:
        """Settle ``t`` if its process ended (True), else escalate its cancel if overdue (False)."""
        if t.popen is not None:
            code = t.popen.poll()
            ended = code is not None
        else:
            code, ended = None, process_start(t.pid) != t.create_time
        if ended:
            _signal_group(t.pid, signal.SIGKILL)  # leftover env workers of its group
            del self.tracked[t.job_id]
            self.bases.release(t.job_id)
            self._reclaim(t.job_id)
            self._settle(t.job_id, code, t)
            return True
        if t.term_sent_at is not None and not t.killed and time.monotonic() - t.term_sent_at > self.grace_s:
            _signal_group(t.pid, signal.SIGKILL)
            t.killed = True
        return False

    def poll(self) -> None:
        """One round: settle ended jobs, escalate overdue cancels.

        Why each job in its own ``try``: one job that cannot be handled is logged (and tried again next
        round); it must not stop the round, or every other job would stay running in the store."""
        changed = False
        for t in list(self.tracked.values()):
            try:
                changed |= self._poll_one(t)
            except Exception:
                log.exception("could not supervise a job; the others go on", extra={"job": t.job_id})
        if changed:
            self.on_change()

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(POLL_S)
