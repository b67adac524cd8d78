"""Starting one job's process as the user who submitted it.

The job runs ``python -m dvlad.runtime.job spec.toml --output-dir run`` in its own session (so its
process group, env workers included, is signalled and reaped as one), with the submitter's uid,
gid and supplementary groups, ``CUDA_VISIBLE_DEVICES`` from the placement, in ``STATE_DIR/jobs/ID/run``
(the user's; see :func:`spawn` for who owns what). A scrubbed environment: nothing of the daemon's
(tokens, NOTIFY_SOCKET) leaks into a user's job.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from dvla.spec import dump_toml, spec_from_dict
from dvlad.gpu.layout import TOPOLOGY_ENV
from dvlad.segments import PREFIX_ENV, daemon_tag, job_prefix
from dvlad.store import Job

PASSED_ENV = ("LANG", "LC_ALL", "TZ", "MUJOCO_GL", "PYOPENGL_PLATFORM", "LIBERO_CONFIG_PATH", "PYTHONPATH")
"""Daemon environment variables a job inherits (rendering, locale, and where the daemon's own Python
finds dvlad, for a checkout run without installing it); everything else is set here."""
JOB_UMASK = 0o077
"""What a job creates is its user's alone (0600 files, 0700 directories)."""
PASS_THROUGH = 0o711
"""The daemon's directories on the way to a user's files: anyone may pass, nobody but root may list."""


@dataclass(frozen=True)
class Started:
    pid: int
    create_time: float
    popen: subprocess.Popen


def job_dir(state_dir: Path, job_id: int) -> Path:
    return state_dir / "jobs" / str(job_id)


def log_path(state_dir: Path, job_id: int) -> Path:
    return job_dir(state_dir, job_id) / "job.log"


def run_dir(state_dir: Path, job_id: int) -> Path:
    return job_dir(state_dir, job_id) / "run"


def process_start(pid: int) -> float | None:
    """The start time of a live, non-zombie ``pid`` (what makes a pid unique across recycling)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.Error:
        return None


def segment_prefix(state_dir: Path, job_id: int) -> str:
    """The prefix of the names of the job's ``/dev/shm`` segments (:mod:`dvlad.segments`)."""
    return job_prefix(daemon_tag(state_dir), job_id)


def _environment(job: Job, gpu_ids: list[int], topology_file: Path | None, shm_prefix: str) -> dict[str, str]:
    try:
        home = pwd.getpwuid(job.uid).pw_dir
    except KeyError:
        home = "/"
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(PATH=os.defpath + ":" + str(Path(sys.executable).parent), HOME=home, USER=job.user,
               LOGNAME=job.user, PYTHONUNBUFFERED="1", DVLA_JOB_ID=str(job.id), **{PREFIX_ENV: shm_prefix},
               CUDA_DEVICE_ORDER="PCI_BUS_ID",  # CUDA's default order is not NVML's: indices would differ
               CUDA_VISIBLE_DEVICES=",".join(map(str, gpu_ids)))
    if topology_file is not None:
        env[TOPOLOGY_ENV] = str(topology_file)
    return env


def spawn(job: Job, gpu_ids: list[int], state_dir: Path, topology: dict[str, Any] | None = None,
          extra_env: dict[str, str] | None = None) -> Started:
    """Write the job's files and start it. Raises OSError/SubprocessError if it cannot start.

    Layout, and why: ``jobs/ID/`` is the daemon's (mode 0711), so the user cannot replace what the
    daemon later writes or reads there as root (``pid``, ``job.log``, ``spec.toml``: a symlink put
    in their place would turn a root write or read into one of any file), and ``jobs/`` is 0711 too:
    passed through, never listed. The user owns ``spec.toml`` and ``job.log`` (mode 0600: readable
    by them, by nobody else) and ``run/`` (0700), the job's working directory and the only place it
    writes; the job runs with umask 077, so its spec copy, metrics, summary, TensorBoard files and
    checkpoints are the user's alone, not their primary group's (labs share one). The daemon reads
    what is in there only through :func:`dvlad.runtime.jobfiles.open_job_file`. A job on several GPUs
    also gets the node's ``topology.json`` (0644: the record ``dvla topo`` shows anyone) to plan its
    layout over. ``extra_env``: more of the job's environment (a node part's place in its multi-node
    job, ``DVLA_NODES``, ...; the manifest of a shared base)."""
    home = job_dir(state_dir, job.id)
    run = run_dir(state_dir, job.id)
    if home.exists():  # left by an earlier database of this state dir: kept, out of the way
        home.rename(home.with_name(f"{job.id}.before-{time.strftime('%Y%m%dT%H%M%S')}"))
    home.parent.mkdir(mode=PASS_THROUGH, exist_ok=True)
    os.chmod(home.parent, PASS_THROUGH)  # also one made by an older dvlad (0755)
    home.mkdir()
    run.mkdir()
    os.chmod(home, PASS_THROUGH)
    os.chmod(run, 0o700)
    spec_file = home / "spec.toml"
    spec_file.write_text(dump_toml(spec_from_dict(job.spec)))
    topology_file = None
    if len(gpu_ids) > 1 and topology is not None:
        topology_file = home / "topology.json"
        topology_file.write_text(json.dumps(topology))
        os.chmod(topology_file, 0o644)
    log = log_path(state_dir, job.id)
    as_other = os.geteuid() == 0 and job.uid != 0
    with log.open("ab") as log_file:
        for path in (spec_file, log):
            os.chmod(path, 0o600)
        if as_other:  # the user owns what the job reads and writes; the daemon (root) still reads it all
            for path in (run, spec_file, log):
                os.chown(path, job.uid, job.gid)
        identity = {}
        if as_other:
            identity = {"user": job.uid, "group": job.gid, "extra_groups": os.getgrouplist(job.user, job.gid)}
        popen = subprocess.Popen(
            [sys.executable, "-m", "dvlad.runtime.job", str(spec_file), "--output-dir", str(run)],
            cwd=run, env={**_environment(job, gpu_ids, topology_file, segment_prefix(state_dir, job.id)),
                          **(extra_env or {})},
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            close_fds=True, umask=JOB_UMASK, **identity)
    create_time = process_start(popen.pid) or psutil.Process(popen.pid).create_time()
    fd = os.open(home / "pid", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as pid_file:  # read back if dvlad dies before recording it
        pid_file.write(f"{popen.pid} {create_time!r}\n")
    return Started(popen.pid, create_time, popen)


def recorded_pid(state_dir: Path, job_id: int) -> tuple[int, float] | None:
    """The pid and start time ``spawn`` wrote, if any."""
    try:
        pid, start = (job_dir(state_dir, job_id) / "pid").read_text().split()
        return int(pid), float(start)
    except (OSError, ValueError):
        return None
