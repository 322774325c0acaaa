"""A stock openvpn 2.6 client reaches the VNet through p2sgw over UDP and TCP."""

from __future__ import annotations

import pytest

from .gateway_fixture import init_gateway, single_transport_profile
from .lab import wait_until


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_client_reaches_vnet(make_lab, proto):
    lab = make_lab(1)
    gw = init_gateway(lab, "--dns", "10.1.0.53")
    profile = gw.issue("alice")
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], single_transport_profile(profile, proto))
    vip = client.wait_connected(timeout=30)
    assert vip.startswith("172.16.201.")
    pushed = client.log_text()
    for option in ("topology subnet", f"ifconfig {vip} 255.255.255.0", "route 10.1.0.0 255.255.255.0",
                   "dhcp-option DNS 10.1.0.53", "peer-id ", "cipher AES-256-GCM", "protocol-flags cc-exit tls-ekm"):
        assert option in pushed, option
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=3)
    assert lab.tcp_transfer(lab.clients[0], lab.vnet_ip, 2 << 20, direction="upload")
    assert lab.tcp_transfer(lab.clients[0], lab.vnet_ip, 2 << 20, direction="download")
    sessions = gw.sessions()
    assert len(sessions) == 1
    s = sessions[0]
    assert s["identity"] == "alice"
    assert s["protocol"] == f"openvpn-{proto}"
    assert s["virtual_ip"] == vip
    assert s["auth_method"] == "certificate"
    assert s["id"].startswith("OVPN_")
    assert s["remote"].startswith(lab.client_ip(0) + ":")
    assert s["bytes_in"] > 2 << 20 and s["bytes_out"] > 2 << 20
    assert set(s) >= {"id", "identity", "protocol", "virtual_ip", "remote", "connected_at", "bytes_in",
                      "bytes_out", "auth_method"}
    client.stop()
    wait_until(lambda: gw.sessions() == [], 10, what="session removed after the client exits")


def test_tls_auth_profile_and_chacha20(make_lab):
    """tls-auth (key-direction 1, the cloud gateway's profile style) and a client that only offers ChaCha20."""
    lab = make_lab(1)
    gw = init_gateway(lab)
    gw.edit_config(openvpn__tls_wrap="tls-auth")
    profile = gw.issue("alice")
    assert "<tls-auth>" in profile.read_text() and "key-direction 1" in profile.read_text()
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], single_transport_profile(profile, "udp"),
                                      extra_args=("--data-ciphers", "CHACHA20-POLY1305"))
    client.wait_connected(timeout=30)
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=3)
    assert "cipher=CHACHA20-POLY1305" in gw.log_text()
    assert "Data Channel: cipher 'CHACHA20-POLY1305'" in client.log_text()
