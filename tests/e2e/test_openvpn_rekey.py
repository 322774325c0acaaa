"""Renegotiation, NAT rebinding and dead-peer detection with the real openvpn client."""

from __future__ import annotations

import re

import pytest

from .gateway_fixture import init_gateway, single_transport_profile
from .lab import wait_until

RENEG_SEC = 6
TRANSFER_SECONDS = 20


def _assert_no_stall(report: dict) -> None:
    """Every one-second iperf3 interval moved data: renegotiation never paused the tunnel."""
    intervals = [i["sum"] for i in report["intervals"]]
    assert len(intervals) >= TRANSFER_SECONDS - 1
    stalled = [round(i["start"]) for i in intervals if i["bytes"] == 0]
    assert not stalled, f"no data in the intervals starting at {stalled} s"


@pytest.mark.parametrize("initiator", ["server", "client"])
def test_renegotiation_keeps_transfer_running(make_lab, initiator):
    lab = make_lab(1)
    gw = init_gateway(lab)
    if initiator == "server":
        gw.edit_config(openvpn__reneg_sec=RENEG_SEC)
    profile = gw.issue("alice")
    gw.start()
    extra = ("--reneg-sec", str(RENEG_SEC)) if initiator == "client" else ()
    client = lab.start_openvpn_client(lab.clients[0], single_transport_profile(profile, "udp"), extra_args=extra)
    client.wait_connected(timeout=30)
    [before] = gw.sessions()
    report = lab.iperf3(lab.clients[0], lab.vnet_ip, seconds=TRANSFER_SECONDS)
    _assert_no_stall(report)
    renegotiated = re.findall(r"openvpn\.renegotiated .*key_id=(\d)", gw.log_text())
    assert len(renegotiated) >= 2, gw.log_text()[-3000:]
    started = re.findall(r"openvpn\.renegotiation .*by_client=(\w+)", gw.log_text())
    assert started and all(s == ("True" if initiator == "client" else "False") for s in started)
    # the session survived as one session: same id, same address, more bytes
    [after] = gw.sessions()
    assert after["id"] == before["id"] and after["virtual_ip"] == before["virtual_ip"]
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)
    # the real client installed new data keys on each renegotiation, not just the initial ones
    assert client.log_text().count("Outgoing Data Channel: Cipher") >= 3


def test_source_port_change_keeps_session(make_lab):
    """A NAT in front of the client rebinds its source port: the session follows the new address."""
    lab = make_lab(1)
    gw = init_gateway(lab)
    profile = gw.issue("alice")
    gw.start()
    ns = lab.clients[0]
    client = lab.start_openvpn_client(ns, single_transport_profile(profile, "udp"))
    client.wait_connected(timeout=30)
    [before] = gw.sessions()
    old_port = int(before["remote"].rsplit(":", 1)[1])
    new_port = 40000 if old_port != 40000 else 40001
    lab.run(ns, "nft", "add", "table", "ip", "rebind")
    lab.run(ns, "nft", "add chain ip rebind post { type nat hook postrouting priority 100 ; }")
    lab.run(ns, "nft", "add", "rule", "ip", "rebind", "post", "udp", "dport", "1194", "snat", "to",
            f"{lab.client_ip(0)}:{new_port}")
    lab.run(ns, "conntrack", "-F", check=False)  # existing flow re-NATed from its next packet
    assert lab.ping(ns, lab.vnet_ip, count=5)
    [after] = gw.sessions()
    assert after["id"] == before["id"]
    assert after["remote"] == f"{lab.client_ip(0)}:{new_port}"
    assert "openvpn.float" in gw.log_text()
    assert lab.tcp_transfer(ns, lab.vnet_ip, 1 << 20)


def test_dead_client_is_dropped_after_keepalive_timeout(make_lab):
    lab = make_lab(1)
    gw = init_gateway(lab)
    gw.edit_config(openvpn__keepalive_interval=1, openvpn__keepalive_timeout=3)
    profile = gw.issue("alice")
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], single_transport_profile(profile, "udp"))
    client.wait_connected(timeout=30)
    assert len(gw.sessions()) == 1
    client.process.kill()  # no exit notification: the gateway must notice silence
    client.process.wait()
    wait_until(lambda: gw.sessions() == [], 15, what="dead session removed")
    assert "ping-restart" in gw.log_text()
