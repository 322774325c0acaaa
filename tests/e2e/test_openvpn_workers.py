"""Data-plane worker processes with real openvpn 2.6 clients: sessions spread over the workers by
peer-id, traffic both ways (also VNet-initiated, which may reach the wrong TUN queue and is
forwarded), counters from the shared table, and a crashed worker's sessions reconnecting."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from .gateway_fixture import init_gateway, single_transport_profile
from .lab import wait_until


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def worker_of(log: str, vip_session: str) -> int:
    match = re.search(rf"session\.up session={vip_session} .* worker=(\d+)", log)
    assert match, f"no session.up line for {vip_session}"
    return int(match.group(1))


def test_sessions_spread_over_workers_and_traffic_flows_both_ways(make_lab):
    lab = make_lab(4)
    gw = init_gateway(lab)
    gw.edit_config(data_workers=2)
    profile = single_transport_profile(gw.issue("alice"), "udp")
    gw.start()
    assert len(children(gw.process.pid)) == 2
    clients = [lab.start_openvpn_client(ns, profile, name=f"alice-{ns}") for ns in lab.clients]
    vips = [c.wait_connected(timeout=30) for c in clients]
    for ns, vip in zip(lab.clients, vips):
        assert lab.ping(ns, lab.vnet_ip, count=2)
        assert lab.ping("vnet", vip, count=2), f"VNet → {vip}"  # the first packet may meet the wrong queue
    assert lab.tcp_transfer(lab.clients[0], lab.vnet_ip, 4 << 20, direction="upload")
    assert lab.tcp_transfer(lab.clients[1], lab.vnet_ip, 4 << 20, direction="download")
    sessions = {s["virtual_ip"]: s for s in gw.sessions()}
    assert sessions[vips[0]]["bytes_in"] > 4 << 20  # counted by a worker, read by the control process
    assert sessions[vips[1]]["bytes_out"] > 4 << 20
    log = gw.log_text()
    workers = {worker_of(log, s["id"]) for s in sessions.values()}
    assert workers == {1, 2}, log[-3000:]
    assert "traceback" not in log.lower()
    clients[0].stop()  # explicit-exit-notify arrives at a worker and ends the session at once
    wait_until(lambda: len(gw.sessions()) == 3, 5, what="the exiting client's session gone")


def test_worker_crash_reconnects_its_sessions(make_lab):
    lab = make_lab(2)
    gw = init_gateway(lab)
    gw.edit_config(data_workers=2)
    profile = single_transport_profile(gw.issue("alice"), "udp")
    gw.start()
    clients = [lab.start_openvpn_client(ns, profile, name=f"alice-{ns}") for ns in lab.clients]
    for c in clients:
        c.wait_connected(timeout=30)
    before = {s["id"]: s for s in gw.sessions()}
    victims = [sid for sid in before if worker_of(gw.log_text(), sid) == 1]
    assert victims
    pids = children(gw.process.pid)
    worker_pid = next(p for p in pids if f'"index": 1,' in Path(f"/proc/{p}/cmdline").read_text())
    os.kill(worker_pid, signal.SIGKILL)  # our own gateway's child
    wait_until(lambda: "dataplane.worker_died" in gw.log_text(), 10, what="the death noticed")
    wait_until(lambda: len(children(gw.process.pid)) == 2, 10, what="a new worker")
    wait_until(lambda: len(gw.sessions()) == 2 and not set(victims) & {s["id"] for s in gw.sessions()}, 60,
               what="the crashed worker's sessions reconnected as new sessions")
    for ns in lab.clients:
        assert lab.ping(ns, lab.vnet_ip, count=3, deadline=15)


def test_single_process_data_plane(make_lab):
    lab = make_lab(1)
    gw = init_gateway(lab)
    gw.edit_config(data_workers=0)
    profile = single_transport_profile(gw.issue("alice"), "udp")
    gw.start()
    assert children(gw.process.pid) == []
    client = lab.start_openvpn_client(lab.clients[0], profile)
    vip = client.wait_connected(timeout=30)
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)
    assert lab.ping("vnet", vip, count=2)
    assert lab.tcp_transfer(lab.clients[0], lab.vnet_ip, 2 << 20, direction="upload")
