"""The SDK without a daemon: where it connects, its light imports, its tar handling, its errors."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from dvla import api, sdk
from dvla.config import SYSTEM_SOCKET, resolve
from dvla.errors import error_from_reply
from dvla.tarball import safe_extract, tar_chunks


def test_importing_the_sdk_pulls_no_torch_numpy_or_dvlad():
    code = ("import dvla, dvla.sdk, sys; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'dvlad')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_where_to_connect_arguments_then_env_then_file_then_sockets(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    assert resolve(env=env).uds == SYSTEM_SOCKET  # nothing set, no personal daemon
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "dvlad.sock").touch()
    assert resolve(env=env).uds == str(tmp_path / "run" / "dvlad.sock")  # `dvlad --user`'s
    config = tmp_path / ".config" / "dvla" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('host = "gpu1.lab:7447"\ntoken = "from-file"\n')
    from_file = resolve(env=env)
    assert (from_file.url, from_file.uds, from_file.token) == ("http://gpu1.lab:7447", None, "from-file")
    assert str(config) in from_file.where
    env.update(DVLA_HOST="unix:///srv/dvlad.sock", DVLA_TOKEN="from-env")
    assert resolve(env=env).uds == "/srv/dvlad.sock" and resolve(env=env).is_local
    env["DVLA_HOST"] = "https://gpu2.lab:443/"
    assert (resolve(env=env).url, resolve(env=env).token) == ("https://gpu2.lab:443", "from-env")
    explicit = resolve("/tmp/x.sock", env=env)
    assert explicit.uds == "/tmp/x.sock" and "the host argument" in explicit.where
    assert resolve("h:1", "arg-token", env=env).token == "arg-token"
    config.write_text('hots = "typo"\n')
    with pytest.raises(sdk.DvlaError) as bad:
        resolve(env=env)
    assert bad.value.field == "hots" and "unknown key" in bad.value.reason


def test_following_a_daemon_never_reached_fails_at_once_saying_where_it_looked(tmp_path, monkeypatch):
    """No daemon has ever answered this client: following a job's log or waiting for it raises at once,
    not after the minute of retries that rides out a restart (a daemon that did answer: test_sdk)."""
    nowhere = str(tmp_path / "no.sock")
    monkeypatch.setattr(api, "RECONNECT_EVERY_S", 60.0)  # one retry would take a minute, on any machine

    async def follow_and_wait_async() -> None:
        async with sdk.AsyncClient(nowhere) as client:
            with pytest.raises(sdk.DaemonUnavailable, match=nowhere):
                [line async for line in client.follow_logs(1)]
            with pytest.raises(sdk.DaemonUnavailable, match=nowhere):
                await sdk.AsyncJob(client, 1).wait()

    started = time.monotonic()
    with sdk.Client(nowhere) as client:
        with pytest.raises(sdk.DaemonUnavailable, match=nowhere):
            list(client.follow_logs(1))
        with pytest.raises(sdk.DaemonUnavailable, match=nowhere):
            sdk.Job(client, 1).wait()
    asyncio.run(follow_and_wait_async())
    assert time.monotonic() - started < 30  # not one retry


def test_error_replies_become_typed_exceptions():
    spec = error_from_reply(400, {"code": "invalid_spec", "field": "spec.env", "reason": "bad",
                                  "issues": [{"field": "spec.env", "reason": "bad"}]})
    assert isinstance(spec, sdk.InvalidSpec) and spec.issues[0]["field"] == "spec.env"
    assert isinstance(error_from_reply(403, {"code": "forbidden", "field": "", "reason": "no"}), sdk.PermissionDenied)
    assert isinstance(error_from_reply(409, {"code": "conflict", "field": "job_id", "reason": "x"}), sdk.Conflict)
    other = error_from_reply(502, "<html>bad gateway</html>")
    assert type(other) is sdk.ApiError and other.status == 502 and "bad gateway" in str(other)


def test_tar_stream_round_trips_and_unsafe_members_are_refused(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"a" * 1500)
    (tmp_path / "b.json").write_bytes(b"{}")
    archive = io.BytesIO(b"".join(tar_chunks([("a.safetensors", tmp_path / "a.safetensors"),
                                               ("b.json", tmp_path / "b.json")])))
    out = tmp_path / "out"
    assert safe_extract(archive, out) == ["a.safetensors", "b.json"]
    assert (out / "a.safetensors").read_bytes() == b"a" * 1500
    for name, kind in (("../up", tarfile.REGTYPE), ("/abs", tarfile.REGTYPE), ("ok/../../up", tarfile.REGTYPE),
                       ("link", tarfile.SYMTYPE), ("hard", tarfile.LNKTYPE), ("fifo", tarfile.FIFOTYPE)):
        member = tarfile.TarInfo(name)
        member.type, member.linkname = kind, "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            tar.addfile(member, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        raw.seek(0)
        with pytest.raises(ValueError, match=repr(name)):
            safe_extract(raw, tmp_path / "refused")
    assert not (tmp_path / "up").exists() and not (tmp_path / "refused").exists()


OLDEST_PYTHON_CANDIDATES = ("/usr/bin/python3.11", "/usr/local/bin/python3.11", sys.executable)
UNPACK_UNDER_ANOTHER_PYTHON = """
import io, stat, sys, tarfile, tempfile
from pathlib import Path
from dvla.tarball import safe_extract

def tar(*members):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as out:
        for name, kind, data, mode in members:
            member = tarfile.TarInfo(name)
            member.type, member.mode, member.size = kind, mode, len(data)
            member.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            out.addfile(member, io.BytesIO(data) if data else None)
    raw.seek(0)
    return raw

root = Path(tempfile.mkdtemp())
names = safe_extract(tar(("w", tarfile.DIRTYPE, b"", 0o777), ("w/a.safetensors", tarfile.REGTYPE, b"a" * 3000, 0o6777)),
                     root / "ok")
made = root / "ok" / "w" / "a.safetensors"
assert names == ["w/a.safetensors"] and made.read_bytes() == b"a" * 3000, names
assert stat.S_IMODE(made.stat().st_mode) == 0o755, oct(made.stat().st_mode)  # no set-id, no group/other write
for i, bad in enumerate([[("../up", tarfile.REGTYPE, b"x", 0o644)], [("l", tarfile.SYMTYPE, b"", 0o777)],
                         [("a", tarfile.REGTYPE, b"x", 0o644), ("a", tarfile.REGTYPE, b"y", 0o644)],
                         [("a", tarfile.REGTYPE, b"x", 0o644), ("a/b", tarfile.REGTYPE, b"y", 0o644)]]):
    try:
        safe_extract(tar(*bad), root / f"bad{i}")
    except ValueError:
        continue
    raise AssertionError(f"not refused: {bad}")
assert not (root / "up").exists()
print(".".join(map(str, sys.version_info[:3])))
"""


def _oldest_python() -> str:
    """The oldest CPython 3.11 on this machine: the CI image has Debian's 3.11.2 beside the default one."""
    found = {}
    for candidate in OLDEST_PYTHON_CANDIDATES:
        if Path(candidate).exists():
            out = subprocess.run([candidate, "-c", "import sys; print(*sys.version_info[:3])"],
                                 capture_output=True, text=True, check=True).stdout
            found[tuple(map(int, out.split()))] = candidate
    return found[min(found)]


def test_uploads_unpack_on_the_oldest_python_the_project_supports():
    """``requires-python >= 3.11``, and ``extractall(filter=...)`` only exists from 3.11.4: extraction
    (uploads to dvlad, checkpoints downloaded by the SDK) must work, and refuse the same things, on
    3.11.0-3.11.3 too (Debian 12's 3.11.2)."""
    python = _oldest_python()
    done = subprocess.run([python, "-c", UNPACK_UNDER_ANOTHER_PYTHON], capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent / "sdk")})
    assert done.returncode == 0, f"{python}: {done.stderr[-2000:]}"


def test_a_policy_name_stays_a_name_beside_a_directory_of_that_name(tmp_path, monkeypatch):
    from dvla import api

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-vla").mkdir()  # e.g. a run directory named after the policy
    assert api.policy_section("tiny-vla") == ({"name": "tiny-vla"}, None)
    assert api.policy_section("my_pkg.policies:make") == ({"name": "my_pkg.policies:make"}, None)
    with pytest.raises(sdk.InvalidSpec, match="no such checkpoint file"):
        api.policy_section("runs/try1")  # a path (it has a slash), and nothing is there


def test_a_job_files_relative_paths_are_its_folders_and_the_daemon_refuses_any_left_relative(tmp_path, monkeypatch):
    from dvla.admission import admit
    from dvla.spec import SpecError, load_spec, spec_to_dict

    project = tmp_path / "project"
    (project / "runs" / "mine").mkdir(parents=True)
    (project / "runs" / "mine" / "checkpoint.safetensors").write_bytes(b"weights")
    (project / "hf" / "m").mkdir(parents=True)
    (project / "assets").mkdir()
    job = project / "job.toml"
    job.write_text('[policy]\nname = "transformer-vla"\ncheckpoint = "runs/mine"\n[policy.args]\npretrained = "hf/m"\n'
                   '[env]\nname = "libero"\nmax_episode_steps = 220\n[env.args]\nlibero_root = "assets"\n')
    monkeypatch.chdir(tmp_path)  # elsewhere: the paths are still the file's
    data, local = api.prepared(job)
    assert local == project / "runs" / "mine" / "checkpoint.safetensors"
    assert (data["policy"]["checkpoint"], data["policy"]["args"]["pretrained"], data["env"]["args"]["libero_root"]) \
        == (str(local), str(project / "hf/m"), str(project / "assets"))
    with pytest.raises(SpecError) as refused:
        admit(spec_to_dict(load_spec(job)))  # as dvlad: the paths left relative
    assert {i.key for i in refused.value.issues} == {"policy.checkpoint", "policy.args.pretrained",
                                                     "env.args.libero_root"}
    with pytest.raises(sdk.InvalidSpec, match=r"job.toml:3:1: policy.checkpoint: .*runs/nope: no such checkpoint"):
        api.prepared(_rewrite(job, "runs/mine", "runs/nope"))
    monkeypatch.chdir(project)  # a dict's relative paths: the current directory's, as train() has always taken them
    assert api.prepared({"policy": {"checkpoint": "runs/mine"}})[1] == local
    assert api.prepared({"policy": {"checkpoint": "/elsewhere/on/the/daemon"}}) == (
        api.spec_dict({"policy": {"checkpoint": "/elsewhere/on/the/daemon"}}), None)  # not here: the daemon's path


def _rewrite(path, old, new):
    path.write_text(path.read_text().replace(old, new))
    return path


def test_an_address_that_names_a_path_is_a_socket_and_a_bare_host_needs_its_port(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # what ~ expands to
    env = {"HOME": str(tmp_path / "home")}
    for address, uds in (("dvlad.sock", tmp_path / "dvlad.sock"), ("./run/dvlad.sock", tmp_path / "run/dvlad.sock"),
                         ("~/dvlad.sock", tmp_path / "home/dvlad.sock"), ("run/d", tmp_path / "run/d")):
        assert resolve(address, env=env).uds == str(uds), address
    assert resolve("https://dvla.lab", env=env).url == "https://dvla.lab"  # a scheme's own port: a TLS proxy
    assert resolve("gpu1.lab:7447", env=env).url == "http://gpu1.lab:7447"
    for address in ("localhost", "gpu1.lab", "10.0.0.7", "[::1]", "gpu1.lab:"):
        with pytest.raises(sdk.DvlaError, match=r"no port: write host:port .*; expected .*host:port") as bad:
            resolve(address, env=env)
        assert bad.value.code == "bad_config", address
    with pytest.raises(sdk.DvlaError, match="nothing may follow host:port"):
        resolve("gpu1.lab:7447/v1", env=env)  # host:port, then a path: TCP, not a file named so
