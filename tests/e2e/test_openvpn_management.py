"""Operating the gateway with real openvpn 2.6 clients attached: `sessions --json`, `disconnect ID`, and a
graceful stop (SIGTERM) that tells clients to reconnect and leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from .gateway_fixture import (
    BackgroundPing,
    control_sessions,
    init_gateway,
    single_transport_profile,
    wait_gateway_log,
    wait_sessions,
)
from .lab import wait_until

SESSION_ID = re.compile(r"^OVPN_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# How openvpn 2.6 (push.c, server_pushed_signal) logs the HALT and RESTART control messages it receives.
HALT_LOGGED = "Halt command was pushed by server"
RESTART_LOGGED = "Connection reset command was pushed by server"
JSON_FIELDS = {"id", "identity", "protocol", "virtual_ip", "remote", "connected_at", "bytes_in", "bytes_out",
               "auth_method"}


def test_sessions_json_and_disconnect(make_lab):
    lab = make_lab(2)
    gw = init_gateway(lab)
    alice_profile = gw.issue("alice")
    bob_profile = gw.issue("bob")
    gw.start()
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)

    alice = lab.start_openvpn_client("c0", single_transport_profile(alice_profile, "udp"), name="alice")
    bob = lab.start_openvpn_client("c1", single_transport_profile(bob_profile, "tcp"), name="bob")
    alice_vip = alice.wait_connected(timeout=30)
    bob_vip = bob.wait_connected(timeout=30)
    assert lab.ping("c0", lab.vnet_ip) and lab.ping("c1", lab.vnet_ip)

    # --- sessions --json: a JSON array, one object per session, the documented fields with sane values
    result = gw.cli("sessions", "--json")
    sessions = json.loads(result.stdout)
    assert isinstance(sessions, list) and len(sessions) == 2
    by_identity = {s["identity"]: s for s in sessions}
    assert set(by_identity) == {"alice", "bob"}
    expected = {
        "alice": ("openvpn-udp", alice_vip, lab.client_ip(0)),
        "bob": ("openvpn-tcp", bob_vip, lab.client_ip(1)),
    }
    for identity, s in by_identity.items():
        protocol, vip, client_ip = expected[identity]
        assert set(s) >= JSON_FIELDS, s  # the documented fields (README); more may follow
        assert SESSION_ID.match(s["id"]), s["id"]
        assert s["protocol"] == protocol
        assert s["virtual_ip"] == vip
        host, _, port = s["remote"].rpartition(":")
        assert host == client_ip and 0 < int(port) < 65536, s["remote"]
        assert s["auth_method"] == "certificate"
        assert s["connected_at"].endswith("Z"), s["connected_at"]
        connected_at = dt.datetime.fromisoformat(s["connected_at"])
        assert before - dt.timedelta(seconds=2) <= connected_at <= dt.datetime.now(dt.UTC)
        assert isinstance(s["bytes_in"], int) and isinstance(s["bytes_out"], int)
        assert s["bytes_in"] > 0 and s["bytes_out"] > 0  # the pings went through
    assert by_identity["alice"]["id"] != by_identity["bob"]["id"]
    # byte counters move with traffic
    assert lab.tcp_transfer("c0", lab.vnet_ip, 1 << 20)
    alice_now = next(s for s in gw.sessions() if s["identity"] == "alice")
    assert alice_now["bytes_in"] >= by_identity["alice"]["bytes_in"] + (1 << 20)

    # --- disconnect one session; the other carries on
    bob_ping = BackgroundPing(lab, "c1", lab.vnet_ip, count=25)
    offset = len(gw.log_text())
    done = gw.cli("disconnect", by_identity["alice"]["id"])
    assert by_identity["alice"]["id"] in done.stdout
    remaining = wait_sessions(gw, lambda s: [x["identity"] for x in s] == ["bob"], timeout=10,
                              what="alice's session to disappear")
    assert remaining[0]["id"] == by_identity["bob"]["id"]
    wait_gateway_log(gw, r"session\.disconnect .*identity=alice .*by=operator", since=offset)
    # openvpn 2.6 logs a pushed HALT as "Halt command was pushed by server ('<reason>')"
    wait_until(lambda: HALT_LOGGED in alice.log_text(), 10, what="the pushed HALT in alice's client log")
    wait_until(lambda: not alice.running, 10, what="alice's openvpn to exit after HALT")
    assert not lab.ping("c0", lab.vnet_ip, count=1)

    sent, received = bob_ping.result(timeout=30)
    assert received >= sent - 1, f"bob lost pings while alice was disconnected: {received}/{sent}"
    assert bob.running
    assert lab.ping("c1", lab.vnet_ip)
    assert lab.tcp_transfer("c1", lab.vnet_ip, 1 << 20, direction="download")
    assert [s["id"] for s in gw.sessions()] == [by_identity["bob"]["id"]]

    # --- disconnect with an id nobody has: exit code 1, a one-line error naming it, nothing disconnected
    bogus = "OVPN_00000000-0000-0000-0000-000000000000"
    refused = gw.cli("disconnect", bogus, check=False)
    assert refused.returncode == 1, (refused.returncode, refused.stdout, refused.stderr)
    message = refused.stderr.strip()
    assert bogus in message and "no such session" in message, message
    assert "Traceback" not in refused.stderr and len(message.splitlines()) == 1, message
    assert refused.stdout == ""
    assert [s["id"] for s in control_sessions(gw)] == [by_identity["bob"]["id"]]
    assert bob.running

    # an empty list is still valid JSON
    bob.stop()
    wait_sessions(gw, lambda s: s == [], what="bob's session to end")
    assert json.loads(gw.cli("sessions", "--json").stdout) == []


def _connected_pair(lab):
    gw = init_gateway(lab)
    alice_profile = single_transport_profile(gw.issue("alice"), "udp")
    bob_profile = single_transport_profile(gw.issue("bob"), "tcp")
    gw.start()
    udp_client = lab.start_openvpn_client("c0", alice_profile, name="alice")
    tcp_client = lab.start_openvpn_client("c1", bob_profile, name="bob")
    udp_client.wait_connected(timeout=30)
    tcp_client.wait_connected(timeout=30)
    assert lab.ping("c0", lab.vnet_ip) and lab.ping("c1", lab.vnet_ip)
    return gw, udp_client, tcp_client


TUN = "p2sgw0"


def test_sigterm_tells_clients_to_restart_and_cleans_up(make_lab):
    lab = make_lab(2)
    gw, udp_client, tcp_client = _connected_pair(lab)
    assert lab.run("gw", "ip", "link", "show", TUN).returncode == 0
    logs_before = {c: len(c.log_text()) for c in (udp_client, tcp_client)}
    offset = len(gw.log_text())

    code = gw.stop()  # SIGTERM
    assert code == 0, f"gateway exited with {code}"
    gateway_log = gw.log_text()[offset:]
    assert "gateway.stopping sessions=2" in gateway_log
    assert "gateway.stopped" in gateway_log
    assert "Traceback" not in gateway_log

    for client in (udp_client, tcp_client):
        told = client.log_text()[logs_before[client]:]
        assert RESTART_LOGGED in told, f"{client.name} was not told to restart:\n{told[-3000:]}"
        assert client.running, f"{client.name} should keep trying to reconnect, not exit"

    assert lab.run("gw", "ip", "link", "show", TUN, check=False).returncode != 0, "TUN device left behind"
    assert not (gw.state_dir / "control.sock").exists()
    listeners = lab.run("gw", "ss", "-Hlnut").stdout
    assert ":1194" not in listeners and ":443" not in listeners, listeners


def test_sigterm_accepts_no_new_sessions_while_stopping(make_lab):
    lab = make_lab(2)
    gw, udp_client, tcp_client = _connected_pair(lab)
    logs_before = {c: len(c.log_text()) for c in (udp_client, tcp_client)}
    offset = len(gw.log_text())
    assert gw.stop() == 0
    gateway_log = gw.log_text()[offset:]
    stopping = gateway_log[gateway_log.index("gateway.stopping"):]
    # Every session the gateway brings up during shutdown is one it abandons without a word.
    assert "session.up" not in stopping, stopping
    for client in (udp_client, tcp_client):
        after_restart = client.log_text()[logs_before[client]:]
        after_restart = after_restart[after_restart.index(RESTART_LOGGED):]
        assert "Initialization Sequence Completed" not in after_restart, (
            f"{client.name} reconnected to the stopping gateway and now holds a dead tunnel"
        )
