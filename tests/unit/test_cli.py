"""The p2sgw command as an operator uses it: state dir in a tmp dir, a fake gateway on the control socket."""

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import types

import pytest
from typer.testing import CliRunner

from p2sgw.cli import app
from p2sgw.config import load_config
from p2sgw.control import socket_path, start_control_server
from p2sgw.pki import Pki

runner = CliRunner()

SESSION = {
    "id": "OVPN_6f1c2f0e-0000-4000-8000-000000000001",
    "identity": "alice",
    "protocol": "openvpn-udp",
    "virtual_ip": "172.16.201.2",
    "remote": "192.0.2.7:51820",
    "connected_at": "2026-01-02T03:04:05+00:00",
    "bytes_in": 1234,
    "bytes_out": 5678,
    "auth_method": "certificate",
}


def p2sgw(state_dir, *args):
    return runner.invoke(app, [*args, "--state-dir", str(state_dir)])


def init(state_dir, *extra):
    return p2sgw(
        state_dir,
        "init",
        "--public-address",
        "vpn.example.com",
        "--pool",
        "172.16.201.0/24",
        "--route",
        "10.1.0.0/16",
        "--dns",
        "10.1.0.2",
        *extra,
    )


@pytest.fixture
def state_dir(tmp_path):
    result = init(tmp_path)
    assert result.exit_code == 0, result.output
    return tmp_path


@pytest.fixture
def gateway(state_dir):
    """A fake running gateway: records requests, answers like the real one."""
    requests = []

    def handle(request):
        requests.append(request)
        if request["op"] == "sessions":
            return {"ok": True, "sessions": [{**SESSION, "internal": "not for the CLI"}]}
        if request["op"] == "disconnect":
            return {"ok": True} if request["id"] == SESSION["id"] else {"ok": False, "error": "no such session"}
        return {"ok": True}

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start_control_server(socket_path(state_dir), handle))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield requests
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()


def other_ca(directory, name="Corp"):
    """A foreign CA (certificate path) plus one of its leaf certificates, which is not a CA."""
    pki = Pki.create(directory, name)
    return pki.ca_cert_path, pki.server_cert_path


def assert_error(result, text):
    assert result.exit_code == 1
    assert text in result.stderr
    assert "Traceback" not in result.output


def test_init_writes_state_and_refuses_to_overwrite(state_dir):
    config = load_config(state_dir)
    assert config.vpn_client_address_pool == ["172.16.201.0/24"]
    assert config.dns_servers == ["10.1.0.2"]
    for name in ("p2sgw.db", "pki/ca.crt", "pki/ca.key", "pki/server.crt", "pki/server.key", "pki/tls-crypt.key"):
        assert (state_dir / name).exists(), name
    assert_error(init(state_dir), "--force")
    assert init(state_dir, "--force", "--udp-port", "1195").exit_code == 0
    assert load_config(state_dir).openvpn.udp_port == 1195


def test_init_rejects_bad_input(tmp_path):
    assert_error(
        p2sgw(tmp_path, "init", "--public-address", "x", "--pool", "nonsense", "--route", "10.0.0.0/8"), "error"
    )
    assert_error(
        p2sgw(tmp_path, "init", "--public-address", "x", "--pool", "10.0.0.0/31", "--route", "10.1.0.0/16"), "too small"
    )
    assert not (tmp_path / "p2sgw.toml").exists()


def test_client_issue_list_revoke(state_dir):
    issued = p2sgw(state_dir, "client", "issue", "alice", "--days", "30")
    assert issued.exit_code == 0, issued.output
    thumbprint = next(line.split()[1] for line in issued.stdout.splitlines() if line.startswith("thumbprint"))
    assert len(thumbprint) == 40

    assert_error(p2sgw(state_dir, "client", "issue", "alice"), "already exists")
    assert_error(p2sgw(state_dir, "client", "issue", "bad/name"), "invalid client name")

    listing = p2sgw(state_dir, "client", "list")
    assert "alice" in listing.stdout and thumbprint in listing.stdout

    revoked = p2sgw(state_dir, "client", "revoke", "alice")  # no gateway running: still succeeds
    assert revoked.exit_code == 0, revoked.output
    config = load_config(state_dir)
    assert [(r.name, r.thumbprint) for r in config.vpn_client_revoked_certificates] == [("alice", thumbprint)]
    assert_error(p2sgw(state_dir, "profile", "alice", "-o", str(state_dir / "a.ovpn")), "revoked")
    assert_error(p2sgw(state_dir, "client", "revoke", "nobody"), "no client named")

    reissued = p2sgw(state_dir, "client", "issue", "alice")
    assert reissued.exit_code == 0, reissued.output
    assert thumbprint not in reissued.stdout


def test_revoke_asks_running_gateway_to_reload(state_dir, gateway):
    assert p2sgw(state_dir, "client", "issue", "bob").exit_code == 0
    assert p2sgw(state_dir, "client", "revoke", "bob").exit_code == 0
    assert gateway == [{"op": "reload"}]


def test_ca_add_list_remove(state_dir, tmp_path_factory):
    files = tmp_path_factory.mktemp("certs")
    root, leaf = other_ca(files)

    assert p2sgw(state_dir, "ca", "add", str(root)).exit_code == 0
    assert_error(p2sgw(state_dir, "ca", "add", str(root)), "already trusted")
    assert_error(p2sgw(state_dir, "ca", "add", str(leaf)), "not a CA certificate")
    assert_error(p2sgw(state_dir, "ca", "add", str(files / "missing.pem")), "cannot read")
    assert_error(p2sgw(state_dir, "ca", "add", str(state_dir / "pki" / "ca.crt")), "built-in")
    [trusted] = load_config(state_dir).vpn_client_root_certificates
    assert trusted.name == "p2sgw CA Corp" and "BEGIN CERTIFICATE" in trusted.public_cert_data

    listing = p2sgw(state_dir, "ca", "list").stdout
    assert "built-in" in listing and trusted.thumbprint in listing

    assert_error(p2sgw(state_dir, "ca", "remove", "p2sgw CA vpn.example.com"), "cannot be removed")
    assert p2sgw(state_dir, "ca", "remove", trusted.thumbprint[:8].lower()).exit_code == 0
    assert load_config(state_dir).vpn_client_root_certificates == []
    assert_error(p2sgw(state_dir, "ca", "remove", "p2sgw CA Corp"), "no trusted root")


def test_ca_limit_and_ambiguous_remove(state_dir, tmp_path_factory):
    for i in range(21):
        root, _ = other_ca(tmp_path_factory.mktemp(f"root{i}"), "Same")
        result = p2sgw(state_dir, "ca", "add", str(root))
        if i < 20:
            assert result.exit_code == 0, result.output
    assert_error(result, "maximum")
    assert len(load_config(state_dir).vpn_client_root_certificates) == 20
    assert_error(p2sgw(state_dir, "ca", "remove", "p2sgw CA Same"), "matches several roots")


def test_profile(state_dir):
    assert p2sgw(state_dir, "client", "issue", "carol").exit_code == 0
    out = state_dir / "carol.ovpn"
    result = p2sgw(state_dir, "profile", "carol", "--type", "openvpn", "-o", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    for tag in ("ca", "cert", "key", "tls-crypt"):
        assert f"<{tag}>\n-----BEGIN" in text or f"<{tag}>\n#" in text
        assert f"</{tag}>" in text
    assert "remote vpn.example.com 1194 udp\nexplicit-exit-notify 1\n</connection>" in text
    assert "remote vpn.example.com 443 tcp\n</connection>" in text
    assert text.index("1194 udp") < text.index("443 tcp")

    assert_error(p2sgw(state_dir, "profile", "nobody", "-o", str(out)), "no client named")
    assert_error(p2sgw(state_dir, "profile", "carol", "--type", "sstp"), "supported types")


def test_tls_auth_profile(state_dir):
    config_path = state_dir / "p2sgw.toml"
    config_path.write_text(config_path.read_text().replace('tls_wrap = "tls-crypt"', 'tls_wrap = "tls-auth"'))
    assert p2sgw(state_dir, "client", "issue", "dan").exit_code == 0
    text = p2sgw(state_dir, "profile", "dan").stdout
    assert "key-direction 1\n<tls-auth>" in text and "<tls-crypt>" not in text


@pytest.mark.skipif(shutil.which("openvpn") is None, reason="openvpn client not installed")
@pytest.mark.parametrize("tls_wrap", ["tls-crypt", "tls-auth"])
def test_profile_parses_with_real_openvpn(tmp_path, tls_wrap):
    # Loopback and unused ports: the client gets past option parsing, then finds nobody to talk to.
    state_dir = tmp_path
    result = p2sgw(
        state_dir,
        "init",
        "--public-address",
        "127.0.0.1",
        "--pool",
        "172.16.201.0/24",
        "--route",
        "10.1.0.0/16",
        "--udp-port",
        "9",
        "--tcp-port",
        "9",
    )
    assert result.exit_code == 0, result.output
    config_path = state_dir / "p2sgw.toml"
    config_path.write_text(config_path.read_text().replace('tls_wrap = "tls-crypt"', f'tls_wrap = "{tls_wrap}"'))
    assert p2sgw(state_dir, "client", "issue", "erin").exit_code == 0
    profile = state_dir / "erin.ovpn"
    assert p2sgw(state_dir, "profile", "erin", "-o", str(profile)).exit_code == 0
    # --verb 4 dumps the parsed options at once; a client that is still running after that parsed them fine.
    with pytest.raises(subprocess.TimeoutExpired) as still_running:
        subprocess.run(["openvpn", "--config", str(profile), "--verb", "4"], capture_output=True, timeout=1)
    log = (still_running.value.stdout or b"").decode() + (still_running.value.stderr or b"").decode()
    assert "Options error" not in log and "is ignored by" not in log, log
    assert f"{tls_wrap.replace('-', '_')}_file = '[INLINE]'" in log, log
    assert "explicit_exit_notification = 1" in log, log


def test_sessions_and_disconnect(state_dir, gateway):
    table = p2sgw(state_dir, "sessions")
    assert table.exit_code == 0, table.output
    assert SESSION["id"] in table.stdout and "172.16.201.2" in table.stdout

    as_json = p2sgw(state_dir, "sessions", "--json")
    assert json.loads(as_json.stdout) == [SESSION]

    assert p2sgw(state_dir, "disconnect", SESSION["id"]).exit_code == 0
    assert_error(p2sgw(state_dir, "disconnect", "OVPN_nope"), "no such session")


def test_sessions_without_gateway(state_dir):
    assert_error(p2sgw(state_dir, "sessions"), "not running")
    assert_error(p2sgw(state_dir, "disconnect", "OVPN_x"), "not running")


def test_missing_state_dir(tmp_path):
    assert_error(p2sgw(tmp_path / "nowhere", "client", "list"), "p2sgw init")


def test_serve_initialises_demo_state(tmp_path, monkeypatch):
    started = []
    fake = types.ModuleType("p2sgw.gateway")
    fake.run_gateway = lambda state_dir: started.append(state_dir) or 3
    monkeypatch.setitem(sys.modules, "p2sgw.gateway", fake)
    result = p2sgw(tmp_path, "serve")
    assert result.exit_code == 3, result.output
    assert started == [tmp_path]
    config = load_config(tmp_path)
    assert config.vpn_client_address_pool == ["172.16.201.0/24"] and config.routes == ["10.1.0.0/16"]
    assert "demo defaults" in result.stdout
