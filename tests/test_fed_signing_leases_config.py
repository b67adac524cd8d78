"""Signed peer requests, leases and the [federation] config, without a daemon (docs/federation.md)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvlad.config import ConfigError, config_from_dict
from dvlad.fed.leases import Leases
from dvlad.fed.secret import load_secret
from dvlad.fed.signing import Refused, Verifier, sign

SECRET = b"s" * 40


def test_a_signed_request_verifies_once_and_names_its_sender():
    verifier = Verifier(SECRET, 30)
    headers = sign(SECRET, "POST", "/v1/fed/leases", b'{"gpus": 1}', "node1")
    assert verifier.verify("POST", "/v1/fed/leases", b'{"gpus": 1}', headers) == "node1"
    with pytest.raises(Refused, match="replayed nonce"):
        verifier.verify("POST", "/v1/fed/leases", b'{"gpus": 1}', headers)


@pytest.mark.parametrize("method, path, body, sender, secret", [
    ("POST", "/v1/fed/leases", b'{"gpus": 8}', "node1", SECRET),  # another body
    ("POST", "/v1/fed/parts", b'{"gpus": 1}', "node1", SECRET),  # another path
    ("DELETE", "/v1/fed/leases", b'{"gpus": 1}', "node1", SECRET),  # another method
    ("POST", "/v1/fed/leases", b'{"gpus": 1}', "node9", SECRET),  # another sender
    ("POST", "/v1/fed/leases", b'{"gpus": 1}', "node1", b"t" * 40),  # another cluster's secret
])
def test_anything_changed_breaks_the_signature(method, path, body, sender, secret):
    headers = {**sign(secret, "POST", "/v1/fed/leases", b'{"gpus": 1}', "node1")}
    headers["X-Dvla-Fed-Node"] = sender
    with pytest.raises(Refused, match="bad signature"):
        Verifier(SECRET, 30).verify(method, path, body, headers)


def test_timestamps_outside_the_window_are_refused_and_unsigned_requests_too():
    verifier = Verifier(SECRET, 30)
    for skew in (-31, 31):
        with pytest.raises(Refused, match="outside the 30 s window"):
            verifier.verify("GET", "/x", b"", sign(SECRET, "GET", "/x", b"", "n", now=time.time() + skew))
    with pytest.raises(Refused, match="not a signed peer request"):
        verifier.verify("GET", "/x", b"", {"Authorization": "Bearer tok"})


def test_nonces_are_forgotten_only_once_the_window_refuses_them():
    verifier = Verifier(SECRET, 30)
    now = time.time()
    old = sign(SECRET, "GET", "/x", b"", "n", now=now - 29)
    verifier.verify("GET", "/x", b"", old, now=now)
    verifier.verify("GET", "/x", b"", sign(SECRET, "GET", "/x", b"", "n", now=now + 5), now=now + 5)
    assert len(verifier._nonces) == 1  # the first one's window has passed: forgotten ...
    with pytest.raises(Refused, match="window"):  # ... and its replay is refused by its timestamp
        verifier.verify("GET", "/x", b"", old, now=now + 5)


def test_leases_expire_and_count_until_their_part_holds_the_room():
    leases = Leases()
    a = leases.grant("node0", 7, [1, 0], 2, ttl_s=0.05)
    b = leases.grant("node0", 8, [], 1, ttl_s=60)
    assert a.gpu_ids == [0, 1]
    assert leases.reserved(set()) == ({0, 1}, 3)
    b.part_id = 42
    assert leases.reserved({42}) == ({0, 1}, 2)  # b's part (active) holds its own slot
    time.sleep(0.06)
    assert leases.renew(b.id) is b
    assert [lease.id for lease in leases.expired()] == [a.id]
    assert leases.reserved(set()) == (set(), 1)  # b's part ended: its lease holds the slot until released
    assert leases.release(b.id) is b and leases.reserved(set()) == (set(), 0)


def test_the_federation_config_is_checked():
    config = config_from_dict({"federation": {"peers": ["10.0.0.2:7070"], "secret_file": "/etc/dvlad/cluster.secret"}})
    assert config.federation.enabled and config.federation.heartbeat_s == 2.0 and config.federation.down_after_s == 10
    for bad, key in [({"peers": ["nohost"]}, "federation.peers[0]"), ({"peers": "a:1"}, "federation.peers"),
                     ({"heartbeat_s": 5.0, "down_after_s": 4.0}, "federation.down_after_s"),
                     ({"peers": ["a:1"]}, "federation.secret_file"),
                     ({"secret_file": "/s", "tls_cert": "/c"}, "federation.tls_key")]:
        with pytest.raises(ConfigError) as err:
            config_from_dict({"federation": bad})
        assert err.value.key == key


def test_the_secret_file_must_be_private_and_long(tmp_path: Path):
    path = tmp_path / "secret"
    path.write_text("x" * 64 + "\n")
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="mode 0600"):
        load_secret(path)
    path.chmod(0o600)
    assert load_secret(path) == b"x" * 64
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 32"):
        load_secret(path)


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "dvlad.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "dvlad.server.main", "--config", str(path), "--check-config"],
                          capture_output=True, text=True, timeout=60)


def test_check_config_reads_the_secret_and_says_what_federation_does(tmp_path: Path):
    secret = tmp_path / "cluster.secret"
    secret.write_text("k" * 64)
    secret.chmod(0o644)
    tokens = tmp_path / "tokens"
    tokens.write_text("")
    tokens.chmod(0o600)
    daemon = f'[daemon]\ntcp = "127.0.0.1:7070"\ntokens_file = "{tokens}"\n'
    fed = f'[federation]\npeers = ["10.0.0.2:7070", "10.0.0.3:7070"]\nsecret_file = "{secret}"\n'
    loose = check_config(tmp_path, daemon + fed)
    assert loose.returncode == 1 and "must be owned by root and mode 0600" in loose.stderr
    secret.chmod(0o600)
    ok = check_config(tmp_path, daemon + fed)
    assert ok.returncode == 0 and "federation 2 peer(s), advertised at 127.0.0.1:7070" in ok.stdout, ok.stderr
    no_tcp = check_config(tmp_path, fed)
    assert no_tcp.returncode == 1 and "federation needs daemon.tcp" in no_tcp.stderr


def test_a_daemon_listening_on_every_address_must_say_where_peers_reach_it(tmp_path: Path):
    secret = tmp_path / "cluster.secret"
    secret.write_text("k" * 64)
    secret.chmod(0o600)
    tokens = tmp_path / "tokens"
    tokens.write_text("")
    tokens.chmod(0o600)
    text = (f'[daemon]\ntcp = "0.0.0.0:7070"\ntokens_file = "{tokens}"\n'
            f'[federation]\npeers = ["10.0.0.2:7070"]\nsecret_file = "{secret}"\n')
    wildcard = check_config(tmp_path, text)
    assert wildcard.returncode == 1 and "set federation.advertise" in wildcard.stderr
    ok = check_config(tmp_path, text + 'advertise = "10.0.0.1:7070"\n')
    assert ok.returncode == 0 and "advertised at 10.0.0.1:7070" in ok.stdout, ok.stderr
