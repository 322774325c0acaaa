"""Virtual addresses seen by real openvpn 2.6 clients: sticky across reconnects and gateway restarts, distinct
per identity, a refusal (not a broken tunnel) when the pool is exhausted, and many clients at once."""

from __future__ import annotations

import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor

from .gateway_fixture import (
    control_sessions,
    init_gateway,
    issue_many,
    single_transport_profile,
    wait_gateway_log,
    wait_sessions,
)
from .lab import wait_until


def test_reconnect_and_gateway_restart_keep_the_address(make_lab):
    lab = make_lab(2)
    gw = init_gateway(lab)
    alice = single_transport_profile(gw.issue("alice"), "udp")
    bob = single_transport_profile(gw.issue("bob"), "udp")
    gw.start()

    first = lab.start_openvpn_client("c0", alice, name="alice-1")
    vip = first.wait_connected(timeout=30)
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(lab.pool)
    assert lab.ping("c0", lab.vnet_ip)
    first.stop()
    wait_sessions(gw, lambda s: s == [], what="alice's session to end after the client exits")

    # Reconnect with the gateway still running.
    second = lab.start_openvpn_client("c0", alice, name="alice-2")
    assert second.wait_connected(timeout=30) == vip
    assert lab.ping("c0", lab.vnet_ip)
    [session] = gw.sessions()
    assert (session["identity"], session["virtual_ip"]) == ("alice", vip)

    # Another identity gets an address of its own while alice is connected ...
    bob_client = lab.start_openvpn_client("c1", bob, name="bob-1")
    bob_vip = bob_client.wait_connected(timeout=30)
    assert bob_vip != vip
    assert lab.ping("c1", lab.vnet_ip)
    assert lab.ping("c0", lab.vnet_ip)
    assert {(s["identity"], s["virtual_ip"]) for s in gw.sessions()} == {("alice", vip), ("bob", bob_vip)}

    # ... and does not take alice's address while she is away either.
    second.stop()
    bob_client.stop()
    wait_sessions(gw, lambda s: s == [], what="both sessions to end")
    bob_again = lab.start_openvpn_client("c1", bob, name="bob-2")
    assert bob_again.wait_connected(timeout=30) == bob_vip
    bob_again.stop()
    wait_sessions(gw, lambda s: s == [], what="bob's session to end")

    # Restart the gateway on the same state directory: the mapping is persistent.
    assert gw.stop() == 0
    gw.start()
    third = lab.start_openvpn_client("c0", alice, name="alice-3")
    assert third.wait_connected(timeout=30) == vip
    assert lab.ping("c0", lab.vnet_ip)
    bob_after_restart = lab.start_openvpn_client("c1", bob, name="bob-3")
    assert bob_after_restart.wait_connected(timeout=30) == bob_vip
    assert lab.ping("c1", lab.vnet_ip)
    assert {(s["identity"], s["virtual_ip"]) for s in gw.sessions()} == {("alice", vip), ("bob", bob_vip)}


TINY_POOL = "172.16.202.0/29"  # .1 is the gateway, .7 broadcast: five client addresses, .2 - .6


def test_exhausted_pool_refuses_the_extra_client(make_lab):
    n_addresses = 5
    lab = make_lab(n_addresses + 1, pool=TINY_POOL)  # the lab routes TINY_POOL from the VNet via the gateway
    gw = init_gateway(lab, pool=TINY_POOL)
    template = single_transport_profile(gw.issue("u0"), "udp")
    names = [f"u{i}" for i in range(n_addresses + 1)]
    profiles = {"u0": template, **issue_many(gw, names[1:], template)}
    gw.start()

    clients = [lab.start_openvpn_client(f"c{i}", profiles[f"u{i}"], name=f"u{i}") for i in range(n_addresses)]
    vips = [c.wait_connected(timeout=60) for c in clients]
    expected = {str(ipaddress.ip_address("172.16.202.0") + i) for i in range(2, 7)}
    assert set(vips) == expected
    for i in range(n_addresses):
        assert lab.ping(f"c{i}", lab.vnet_ip), f"u{i} ({vips[i]}) cannot reach the VNet"

    log_offset = len(gw.log_text())
    extra = lab.start_openvpn_client(f"c{n_addresses}", profiles[names[-1]], name=names[-1])
    line = wait_gateway_log(gw, r"address\.pool_exhausted", since=log_offset, timeout=30)
    assert f"identity={names[-1]}" in line
    wait_until(lambda: "AUTH_FAILED" in extra.log_text(), 15, what="AUTH_FAILED in the extra client's log")
    wait_until(lambda: not extra.running, 15, what="the refused client to exit")
    assert "session.up" not in gw.log_text()[log_offset:]

    # Everyone else is unaffected.
    sessions = gw.sessions()
    assert sorted(s["identity"] for s in sessions) == names[:-1]
    for i in range(n_addresses):
        assert clients[i].running
    with ThreadPoolExecutor(n_addresses) as pool:
        assert all(pool.map(lambda i: lab.ping(f"c{i}", lab.vnet_ip), range(n_addresses)))

    # Once somebody leaves, the newcomer is served (with the address of the one who left).
    clients[0].stop()
    wait_sessions(gw, lambda s: len(s) == n_addresses - 1, what="u0's session to end")
    retry = lab.start_openvpn_client(f"c{n_addresses}", profiles[names[-1]], name=f"{names[-1]}-retry")
    assert retry.wait_connected(timeout=30) == vips[0]
    assert lab.ping(f"c{n_addresses}", lab.vnet_ip)


N_MANY = 20


def test_twenty_clients_at_once(make_lab):
    lab = make_lab(N_MANY)
    gw = init_gateway(lab)
    template = single_transport_profile(gw.issue("m00"), "udp")
    names = [f"m{i:02d}" for i in range(N_MANY)]
    profiles = {"m00": template, **issue_many(gw, names[1:], template)}
    gw.start()

    started = time.monotonic()
    clients = [lab.start_openvpn_client(f"c{i}", profiles[name], name=name) for i, name in enumerate(names)]
    vips = [c.wait_connected(timeout=90) for c in clients]
    connect_time = time.monotonic() - started
    assert len(set(vips)) == N_MANY, vips
    assert all(ipaddress.ip_address(v) in ipaddress.ip_network(lab.pool) for v in vips)

    with ThreadPoolExecutor(10) as pool:
        reached = list(pool.map(lambda i: lab.ping(f"c{i}", lab.vnet_ip, count=3), range(N_MANY)))
    assert all(reached), [names[i] for i, ok in enumerate(reached) if not ok]

    sessions = gw.sessions()
    assert len(sessions) == N_MANY
    assert {s["identity"] for s in sessions} == set(names)
    assert len({s["virtual_ip"] for s in sessions}) == N_MANY
    assert {s["identity"]: s["virtual_ip"] for s in sessions} == dict(zip(names, vips))
    assert len({s["id"] for s in sessions}) == N_MANY
    assert all(c.running for c in clients)
    print(f"{N_MANY} clients connected in {connect_time:.1f} s")

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda c: c.stop(), clients))
    wait_until(lambda: control_sessions(gw) == [], 20, what="all sessions to end")
