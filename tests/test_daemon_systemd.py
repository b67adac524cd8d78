"""systemd integration: the notify protocol (READY, WATCHDOG), the unit file, --check-config."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import time

import pytest

from dvlad.testing import PYTHON, ROOT

UNIT = ROOT / "systemd" / "dvlad.service"


@pytest.mark.slow
def test_ready_after_listening_then_watchdog_pings(tmp_path, dvlads):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(20)
        d = dvlads(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        messages = []
        deadline = time.monotonic() + 20
        while "WATCHDOG=1" not in messages or "READY=1" not in messages:
            assert time.monotonic() < deadline, messages
            messages += sock.recv(4096).decode().split("\n")
        assert os.path.exists(d.socket)  # READY came after the socket was listening
        ready = messages.index("READY=1")
        assert messages[ready + 1:].count("WATCHDOG=1") >= 1 or messages.count("WATCHDOG=1") >= 2
        d.stop()
        while "STOPPING=1" not in messages:
            messages += sock.recv(4096).decode().split("\n")


def test_unit_file_keys():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    for key in ("RuntimeDirectory", "StateDirectory", "LogsDirectory"):
        assert service[key] == "dvlad"
    assert service["KillMode"] == "process"  # stopping dvlad leaves the jobs to be re-adopted
    caps = service["CapabilityBoundingSet"].split()
    assert {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN"} <= set(caps)  # jobs start as their users
    assert "PrivateUsers" not in service and "DynamicUser" not in service  # both would forbid that


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    # ExecStart points at this checkout's dvlad: verify checks that the binary exists and is executable
    unit = tmp_path / "dvlad.service"
    unit.write_text(UNIT.read_text().replace("/opt/dvla/.venv/bin/dvlad", str(PYTHON.parent / "dvlad")))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in out.stderr.splitlines() if "dvlad.service" in line]
    assert out.returncode == 0 and not problems, out.stderr


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON.parent / "dvlad"), *args, "--check-config"], capture_output=True, text=True)


def test_log_level_has_help():
    out = subprocess.run([str(PYTHON.parent / "dvlad"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "the least severe level logged" in out.stdout, out.stdout


def test_check_config_accepts_the_example_and_refuses_mistakes(tmp_path):
    ok = run_check("--config", str(ROOT / "systemd" / "dvlad.toml"))
    assert ok.returncode == 0 and "config ok" in ok.stdout, ok.stderr
    bad = tmp_path / "bad.toml"
    for text, message in (("[limits.default]\ngpu = 2\n", "limits.default.gpu: unknown key"),
                          ("[daemon]\ncancel_grace_s = \"soon\"\n", "daemon.cancel_grace_s: expected float"),
                          ("[nodes]\n", "nodes: unknown section"), ("[daemon\n", "invalid TOML"),
                          ('[daemon]\ntcp = "7447"\n', "daemon.tcp: expected host:port")):
        bad.write_text(text)
        out = run_check("--config", str(bad))
        assert out.returncode == 1 and message in out.stderr, (text, out.stderr)


def test_tokens_file_must_be_private(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret root\n")
    tokens.chmod(0o644)
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\ntcp = "127.0.0.1:0"\ntokens_file = "{tokens}"\n')
    out = run_check("--config", str(config))
    assert out.returncode == 1 and "mode 0600" in out.stderr
    tokens.chmod(0o600)
    assert run_check("--config", str(config)).returncode == 0


def test_a_personal_daemon_reads_the_system_config_only_when_given_it(tmp_path, monkeypatch):
    from dvlad.sched import Limit
    from dvlad.server.main import _parser, resolve

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    system = tmp_path / "dvlad.toml"
    system.write_text('[daemon]\ntcp = "0.0.0.0:7447"\n[limits.default]\ngpus = 1\n')
    machine = resolve(_parser().parse_args([]), system)  # the system daemon: the file, found by default
    assert machine.daemon.tcp == "0.0.0.0:7447" and machine.limits.default_user == Limit(gpus=1)
    personal = resolve(_parser().parse_args(["--user"]), system)
    assert personal.daemon.tcp == "" and personal.limits.default_user == Limit()
    assert personal.daemon.socket == str(tmp_path / "run" / "dvlad.sock")
    chosen = resolve(_parser().parse_args(["--user", "--config", str(system)]), system)
    assert chosen.daemon.tcp == "0.0.0.0:7447" and chosen.daemon.socket == personal.daemon.socket
    assert resolve(_parser().parse_args([]), tmp_path / "absent.toml").daemon.tcp == ""  # no file: defaults


def test_a_bad_tokens_file_is_one_line_with_file_and_line_when_serving_too(tmp_path):
    tokens = tmp_path / "tokens"
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\ntcp = "127.0.0.1:0"\ntokens_file = "{tokens}"\nsocket_group = ""\n')
    serve = [str(PYTHON.parent / "dvlad"), "--config", str(config), "--state-dir", str(tmp_path / "state"),
             "--socket", str(tmp_path / "dvlad.sock")]
    for text, mode, message in (
            (None, 0, "cannot read the tokens file: No such file or directory"),
            ("s3cret root\n", 0o644, "must be owned by root and mode 0600 (is 0o644)"),
            ("# TOKEN USER\n\ns3cret root extra\n", 0o600, "expected TOKEN USER, got 3 field(s)")):
        if text is not None:
            tokens.write_text(text)
            tokens.chmod(mode)
        where = f"{tokens}:3" if "field" in message else str(tokens)
        for check in ([], ["--check-config"]):  # dvlad itself says what --check-config says, and exits
            out = subprocess.run([*serve, *check], capture_output=True, text=True, timeout=60)
            assert (out.returncode, out.stderr) == (1, f"dvlad: config: {where}: {message}\n"), out.stderr
