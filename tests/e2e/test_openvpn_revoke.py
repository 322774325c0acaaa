"""`p2sgw client revoke` against live real-openvpn sessions: the revoked client is cut off within seconds and
refused afterwards, everybody else keeps working."""

from __future__ import annotations

import time

from .gateway_fixture import (
    BackgroundPing,
    control_sessions,
    init_gateway,
    single_transport_profile,
    wait_gateway_log,
)
from .lab import wait_until

REVOKE_DEADLINE_S = 5.0


def test_revoke_ends_live_session_and_refuses_reconnect(make_lab):
    lab = make_lab(2)
    gw = init_gateway(lab)
    alice_profile = single_transport_profile(gw.issue("alice"), "udp")
    bob_profile = single_transport_profile(gw.issue("bob"), "udp")
    gw.start()

    alice = lab.start_openvpn_client("c0", alice_profile, name="alice-1")
    bob = lab.start_openvpn_client("c1", bob_profile, name="bob")
    alice.wait_connected(timeout=30)
    bob_vip = bob.wait_connected(timeout=30)
    assert lab.ping("c0", lab.vnet_ip)
    assert lab.ping("c1", lab.vnet_ip)
    [bob_session] = [s for s in gw.sessions() if s["identity"] == "bob"]

    # bob pings the VNet host all through the revocation (~10 s at 5 packets per second).
    bob_ping = BackgroundPing(lab, "c1", lab.vnet_ip, count=50)
    time.sleep(1)

    log_offset = len(gw.log_text())
    gw.cli("client", "revoke", "alice")
    revoked_at = time.monotonic()

    def alice_gone() -> bool:
        in_sessions = any(s["identity"] == "alice" for s in control_sessions(gw))
        told = "AUTH_FAILED" in alice.log_text() or not alice.running
        return not in_sessions and told

    wait_until(alice_gone, 15, interval=0.05, what="alice's session to end and her client to be told")
    elapsed = time.monotonic() - revoked_at
    print(f"revocation took effect {elapsed:.2f} s after the revoke command returned")
    assert elapsed <= REVOKE_DEADLINE_S, f"revocation took {elapsed:.2f} s to take effect"
    assert [s["identity"] for s in gw.sessions()] == ["bob"]  # the CLI's view agrees
    wait_until(lambda: not alice.running, 10, what="alice's openvpn to exit after AUTH_FAILED")
    assert "AUTH_FAILED" in alice.log_text()
    assert wait_gateway_log(gw, r"session\.revoked .*identity=alice", since=log_offset)

    # Reconnecting with the same profile is refused.
    log_offset = len(gw.log_text())
    retry = lab.start_openvpn_client("c0", alice_profile, name="alice-2")
    line = wait_gateway_log(gw, r"auth\.refused .*identity=alice", since=log_offset, timeout=30)
    assert 'reason="certificate revoked"' in line, line
    wait_until(lambda: "AUTH_FAILED" in retry.log_text(), 15, what="AUTH_FAILED in alice's reconnect log")
    wait_until(lambda: not retry.running, 15, what="alice's refused client to exit")
    assert "session.up" not in gw.log_text()[log_offset:]
    assert "Initialization Sequence Completed" not in retry.log_text()

    # bob never noticed.
    sent, received = bob_ping.result(timeout=30)
    assert sent == 50 and received >= sent - 1, f"bob lost pings during the revocation: {received}/{sent}"
    assert bob.running
    [after] = gw.sessions()
    assert (after["id"], after["identity"], after["virtual_ip"]) == (bob_session["id"], "bob", bob_vip)
    assert lab.ping("c1", lab.vnet_ip)

    # The CLI reflects the revocation: alice's "revoked" column holds a date, bob's says no.
    rows = {}
    for line in gw.cli("client", "list").stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").replace("┃", "│").split("│")]
        if len(cells) == 4:
            rows[cells[0]] = cells
    assert rows["alice"][3] not in ("", "no"), rows
    assert rows["bob"][3] == "no", rows
