"""The lab itself works: a real openvpn client reaches the VNet host through a real openvpn server.

No p2sgw code runs here, so a failure points at the lab (or the machine), not at the gateway.
"""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from bench.reference_openvpn import REFERENCE_POOL, start_reference_server

from .lab import VNET_IP, Lab


def test_clients_reach_only_the_gateway_segment(make_lab) -> None:
    lab: Lab = make_lab(2)
    assert lab.ping("c0", lab.gw_client_ip)
    assert lab.ping("c0", lab.client_ip(1))
    assert lab.ping("vnet", lab.gw_vnet_ip)
    assert not lab.ping("c0", VNET_IP, count=1), "clients must reach the VNet only through a tunnel"


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_real_openvpn_client_reaches_vnet_through_reference_server(lab: Lab, tmp_path, proto) -> None:
    server = start_reference_server(lab, tmp_path / "reference", proto)
    client = lab.start_openvpn_client("c0", server.client_profile)

    virtual_ip = client.wait_connected(timeout=30)

    assert ipaddress.ip_address(virtual_ip) in ipaddress.ip_network(REFERENCE_POOL)
    assert lab.ping("c0", VNET_IP)
    assert lab.tcp_transfer("c0", VNET_IP, 2 * 1024 * 1024)
    assert lab.tcp_transfer("c0", VNET_IP, 256 * 1024, direction="download")
    assert "Initialization Sequence Completed" in client.log_text()

    client.stop()
    assert not client.running
    assert not lab.ping("c0", VNET_IP, count=2), "traffic must stop with the tunnel"


def test_iperf3_through_reference_server(lab: Lab, tmp_path) -> None:
    server = start_reference_server(lab, tmp_path / "reference", "udp")
    client = lab.start_openvpn_client("c0", server.client_profile)
    client.wait_connected(timeout=30)

    report = lab.iperf3("c0", VNET_IP, seconds=1)

    assert report["end"]["sum_received"]["bytes"] > 0


def test_namespaces_are_gone_after_close(tmp_path) -> None:
    with Lab(1, workdir=tmp_path) as lab:
        lab.popen("c0", "sleep", "300")
        names = list(lab.namespaces.values())
    remaining = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in remaining.split() for name in names)
