"""A real ``dvlad`` process on a real Unix socket, and a small HTTP client for it.

Why in the package (as ``aiohttp.test_utils`` is in aiohttp's): the tests and the benchmark scripts
both start real daemons, and scripts never import tests. Standard library only at import time.

Run as a script, it makes one request and prints ``{"status", "body"}``: the tests run it as
another Unix user, because the daemon takes the caller's identity from the socket's peer credentials.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
if not os.path.exists(PYTHON):  # not Path.exists: run as another user (as_user), the venv may be closed to it
    PYTHON = Path(sys.executable)
"""The checkout's venv, or (on the GPU machine, which has none) the Python running this."""
FIXTURE = next((p for p in (ROOT / "shared", ROOT.parent / "shared") if p.is_dir()),
               Path("/work/shared")) / "fixtures/gpu/h100-x1/topology.json"
"""The recorded topology of a real one-GPU H100 (``../shared/fixtures``), replayed where NVML is absent."""
TINY_POLICY = {"d_model": 16, "layers": 1, "heads": 2, "patch_grid": 2}
"""tiny-vla's arguments for a model that builds and steps in milliseconds on one core."""
LONG = {"job": {"name": "long"}, "policy": {"args": TINY_POLICY}, "algo": {"update_epochs": 1, "minibatches": 2},
        "env": {"name": "synthetic", "num_envs": 4, "groups": 2, "workers": 1,
                "args": {"step_ms": 2.0, "image_size": 16, "cameras": ["image"], "max_episode_steps": 24}},
        "pipeline": {"segment_steps": 8}, "train": {"total_env_steps": 10**9, "resume": False}}
"""A small job that runs until cancelled (its env-step budget is out of reach)."""


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def request(sock: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
            content_type: str = "application/json", timeout: float = 30.0) -> tuple[int, Any]:
    """One request; the reply decoded as JSON when it is JSON, else as text."""
    conn = UnixConnection(sock, timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": content_type} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, json.loads(payload)
        return resp.status, payload.decode(errors="replace")
    finally:
        conn.close()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def started_lanes(pid: int) -> int:
    """How many lane processes (env workers, learner ranks, actor replicas: the children multiprocessing
    spawned, not its resource tracker) job process ``pid`` has started so far: a test that must act
    while one of them is still starting (importing torch) waits for it to appear."""
    import psutil

    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return 0
    started = 0
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended meanwhile
            started += "spawn_main" in " ".join(child.cmdline())
    return started


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    """``predicate()`` once it is true (polled), else AssertionError saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(poll)
    return result


class Dvlad:
    """``dvlad --config C --state-dir S --socket P`` in a short /tmp directory (socket paths are short).

    ``config=None`` passes no ``--config`` at all: with ``user_mode``, ``dvlad --user`` exactly as a
    user starts it, on built-in defaults. ``source``: run the ``dvlad`` package of another checkout
    (its root; with this venv), so a benchmark measures before and after a change in one run."""

    def __init__(self, config: str | None = "", env: dict[str, str] | None = None, user_mode: bool = False,
                 source: Path | None = None):
        self.source = source
        self.home = Path(tempfile.mkdtemp(prefix="dvlad-"))
        os.chmod(self.home, 0o755)  # other test users reach the socket through it
        self.config = self.home / "dvlad.toml"
        self.config_args = [] if config is None else ["--config", str(self.config)]
        if config is not None:
            self.config.write_text('[daemon]\nsocket_group = ""\ncancel_grace_s = 10.0\n' + config)
        self.env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa"), **(env or {})}
        if user_mode:  # `dvlad --user`: where things go follows $XDG_RUNTIME_DIR and $HOME
            self.env.update(HOME=str(self.home), XDG_RUNTIME_DIR=str(self.home / "run"))
            (self.home / "run").mkdir(mode=0o700)  # as a login's runtime dir is: dvlad refuses a laxer one
            self.socket = str(self.home / "run" / "dvlad.sock")
            self.state_dir = self.home / ".local" / "state" / "dvlad"
            self.args = ["--user"]
        else:
            self.socket = str(self.home / "dvlad.sock")
            self.state_dir = self.home / "state"
            self.args = ["--state-dir", str(self.state_dir), "--socket", self.socket]
        self.proc: subprocess.Popen | None = None
        self.stderr = self.home / "dvlad.stderr"

    def serve_tcp(self, tokens: str) -> int:
        """Listen on TCP too (a free port of 127.0.0.1, returned) with ``tokens`` (``TOKEN USER`` lines)."""
        port = free_port()
        path = self.home / "tokens"
        path.write_text(tokens)
        path.chmod(0o600)
        self.config.write_text(self.config.read_text().replace(
            "[daemon]\n", f'[daemon]\ntcp = "127.0.0.1:{port}"\ntokens_file = "{path}"\n'))
        return port

    def federate(self, name: str, peers: list[str], secret: str, **settings: float | str) -> None:
        """Join a federation (call after :meth:`serve_tcp`): this node's ``name``, its ``peers``
        (``host:port``), the cluster ``secret`` (written to a 0600 file) and other ``[federation]`` keys."""
        path = self.home / "cluster.secret"
        path.write_text(secret + "\n")
        path.chmod(0o600)
        lines = [f'name = "{name}"', f"peers = {json.dumps(peers)}", f'secret_file = "{path}"',
                 *(f"{key} = {json.dumps(value)}" for key, value in settings.items())]
        self.config.write_text(self.config.read_text() + "\n[federation]\n" + "\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0, open_files: int | None = None) -> Dvlad:
        """Start dvlad and wait until it answers; ``open_files``: its file limit (soft and hard), as a
        small ``LimitNOFILE`` of a unit would set it."""
        limit = None
        if open_files is not None:
            def limit() -> None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
        with self.stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(PYTHON), "-m", "dvlad.server.main", *self.config_args, *self.args],
                stdout=subprocess.DEVNULL, stderr=err, env=self.env, preexec_fn=limit,
                cwd=self.source)  # -m finds cwd's dvlad first
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dvlad exited {self.proc.returncode}: {self.stderr.read_text()[-2000:]}")
            try:
                if request(self.socket, "GET", "/v1/nodes", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"dvlad did not listen within {timeout} s: {self.stderr.read_text()[-2000:]}")

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return request(self.socket, method, path, body, **kw)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the daemon has, newest first, page by page (``GET /v1/jobs`` gives at most
        ``JOBS_PAGE[1]`` a call; ``before=`` pages back)."""
        from dvla.api import JOBS_PAGE  # here, not at the top: this file also runs alone as another user (as_user)

        out: list[dict[str, Any]] = []
        query = f"limit={JOBS_PAGE[1]}"
        while True:
            status, body = self.call("GET", f"/v1/jobs?{query}")
            assert status == 200, body
            out += body["jobs"]
            if len(body["jobs"]) < JOBS_PAGE[1]:
                return out
            query = f"limit={JOBS_PAGE[1]}&before={body['jobs'][-1]['id']}"

    def job(self, job_id: int) -> dict[str, Any]:
        status, body = self.call("GET", f"/v1/jobs/{job_id}")
        assert status == 200, body
        return body

    def wait_state(self, job_id: int, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job['reason']}")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def close(self) -> None:
        """Stop dvlad, then kill the process groups of the jobs it started (ours alone), remove the files."""
        self.stop()
        db = self.state_dir / "dvlad.db"
        if db.exists():
            import sqlite3

            import psutil

            with sqlite3.connect(db) as conn:
                started = conn.execute("SELECT pid, pid_start FROM jobs WHERE pid IS NOT NULL").fetchall()
            for pid, pid_start in started:
                try:  # only the very process dvlad started (same start time), never a recycled pid
                    if psutil.Process(pid).create_time() == pid_start:
                        os.killpg(pid, signal.SIGKILL)
                except (psutil.Error, ProcessLookupError, PermissionError):
                    pass
        shutil.rmtree(self.home, ignore_errors=True)


ROOT_TOKEN = "tok root\n"


def federation(daemons: list[Dvlad], secrets: list[str], **settings: float | str) -> list[str]:
    """Make ``daemons`` (made, not started) peers of each other on 127.0.0.1, ``node0``, ``node1``, ...,
    each with its secret of ``secrets`` (the same one for a working cluster); returns their addresses.
    Every daemon's token ``tok`` is root's (tests run as root)."""
    addrs = [f"127.0.0.1:{d.serve_tcp(ROOT_TOKEN)}" for d in daemons]
    for i, (daemon, secret) in enumerate(zip(daemons, secrets, strict=True)):
        daemon.federate(f"node{i}", [a for a in addrs if a != addrs[i]], secret, **settings)
    return addrs


if __name__ == "__main__":
    sock, method, path = sys.argv[1:4]
    status, body = request(sock, method, path, json.loads(sys.argv[4]) if len(sys.argv) > 4 else None)
    print(json.dumps({"status": status, "body": body}))
