"""Sticky leases: the same identity gets the same address back, across reconnects and restarts."""

import ipaddress

import pytest

from p2sgw.addressing import AddressPool, parse_pool_networks
from p2sgw.store import Store

IP = ipaddress.IPv4Address


@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'p2sgw.db'}") as store:
        yield store


def test_first_addresses_skip_network_and_gateway(store):
    pool = AddressPool(["172.16.201.0/24"], store)
    assert pool.lease("alice") == IP("172.16.201.2")
    assert pool.lease("bob") == IP("172.16.201.3")
    assert pool.gateway_address_for("172.16.201.3") == IP("172.16.201.1")
    assert pool.netmask_for("172.16.201.3") == IP("255.255.255.0")


def test_sticky_after_release(store):
    pool = AddressPool(["10.8.0.0/24"], store)
    alice = pool.lease("alice")
    bob = pool.lease("bob")
    pool.release(alice)
    assert pool.lease("carol") not in (alice, bob)  # alice's address stays hers while others are free
    assert pool.lease("alice") == alice


def test_concurrent_session_of_same_identity_gets_another_address(store):
    pool = AddressPool(["10.8.0.0/24"], store)
    first = pool.lease("alice")
    second = pool.lease("alice")
    assert second != first
    pool.release(second)
    pool.release(first)
    assert pool.lease("alice") == first


def test_restart_keeps_mapping(store):
    pool = AddressPool(["10.8.0.0/24"], store)
    addresses = {name: pool.lease(name) for name in ("alice", "bob", "carol")}
    assert store.load_leases("default") == []  # written behind: a sign-in never waits for the database
    assert pool.flush() == 3 and pool.flush() == 0
    restarted = AddressPool(["10.8.0.0/24"], store)
    assert restarted.lease("carol") == addresses["carol"]
    assert restarted.lease("dave") not in addresses.values()
    assert restarted.lease("alice") == addresses["alice"]


def test_exhaustion_returns_none_then_recovers(store):
    pool = AddressPool(["10.8.0.0/30"], store)  # .0 network, .1 gateway, .2 client, .3 broadcast
    assert pool.lease("alice") == IP("10.8.0.2")
    assert pool.lease("bob") is None
    pool.release("10.8.0.2")
    assert pool.lease("bob") == IP("10.8.0.2")  # alice's idle address is reused rather than refusing bob
    assert pool.lease("alice") is None
    pool.release("10.8.0.2")
    assert pool.lease("alice") == IP("10.8.0.2")


def test_least_recently_used_idle_address_is_reused_first(store):
    pool = AddressPool(["10.8.0.0/29"], store)  # clients .2 to .6
    leased = {name: pool.lease(name) for name in "abcde"}
    for name in "cadbe":
        pool.release(leased[name])
    assert pool.lease("new") == leased["c"]
    assert pool.lease("a") == leased["a"]  # still sticky
    assert pool.lease("c") == leased["d"]  # c lost its address: the next least recently used


def test_multiple_networks_and_returned_addresses(store):
    pool = AddressPool(["10.9.0.0/30", "10.8.0.0/30"], store)
    assert pool.lease("a") == IP("10.8.0.2")
    assert pool.lease("b") == IP("10.9.0.2")
    assert pool.gateway_address_for("10.9.0.2") == IP("10.9.0.1")
    extra = pool.lease("a")  # a second session of "a" is not persisted
    assert extra is None
    with pytest.raises(ValueError, match="not in any address pool"):
        pool.netmask_for("192.0.2.1")


def test_never_hands_out_a_live_address(store):
    pool = AddressPool(["10.8.0.0/28"], store)  # 13 client addresses
    live = set()
    for round_ in range(5):
        for i in range(13):
            address = pool.lease(f"user{(i * 7 + round_) % 20}")
            assert address is not None and address not in live
            live.add(address)
        assert pool.lease("one-too-many") is None
        for address in list(live)[::2]:
            pool.release(address)
            live.discard(address)
        for address in list(live):
            pool.release(address)
            live.discard(address)


def test_large_pool_is_fast(store):
    pool = AddressPool(["10.0.0.0/8"], store)
    assert pool.lease("alice") == IP("10.0.0.2")
    assert pool.lease("bob") == IP("10.0.0.3")


@pytest.mark.parametrize(
    ("networks", "message"),
    [
        (["10.0.0.0/31"], "too small"),
        (["fd00::/64"], "IPv4"),
        (["10.0.0.0/16", "10.0.1.0/24"], "overlap"),
        ([], "at least"),
    ],
)
def test_invalid_pools_refused(networks, message):
    with pytest.raises(ValueError, match=message):
        parse_pool_networks(networks)


def test_claim_static_address(tmp_path):
    from p2sgw.addressing import AddressPool
    from p2sgw.store import Store

    pool = AddressPool(["172.16.201.0/29"], Store(f"sqlite:///{tmp_path}/s.db"))
    assert pool.claim("172.16.201.5")
    assert not pool.claim("172.16.201.5")  # live already
    assert not pool.claim("172.16.201.1")  # the gateway's own address
    assert not pool.claim("10.0.0.1")  # not ours
    leased = {str(pool.lease(f"user{i}")) for i in range(4)}
    assert "172.16.201.5" not in leased
    pool.release("172.16.201.5")
    assert pool.claim("172.16.201.5")


def test_queued_changes_replayed_in_order_keep_least_recently_used_order(store):
    """Stealing an idle mapping, re-leasing and deleting all land in one flush, in order."""
    pool = AddressPool(["10.8.0.0/29"], store)  # clients .2 to .6
    first = {name: pool.lease(name) for name in ("a", "b", "c", "d", "e")}
    for address in first.values():
        pool.release(address)
    assert pool.lease("c") == first["c"]  # refreshed: now the most recently used
    pool.release(first["c"])
    stolen = pool.lease("f")  # no unmapped address left: takes the least recently used ("a"'s)
    assert stolen == first["a"]
    pool.flush()
    restarted = AddressPool(["10.8.0.0/29"], store)
    owners = {record.identity: record.address for record in store.load_leases("default")}
    assert "a" not in owners and owners["f"] == str(first["a"])
    assert [r.identity for r in store.load_leases("default")][-2:] == ["c", "f"]  # least recently used first
    assert restarted.lease("b") == first["b"]


def test_failed_flush_keeps_the_changes_queued(store, monkeypatch):
    pool = AddressPool(["10.8.0.0/24"], store)
    pool.lease("alice")

    def down(changes):
        raise OSError("database unreachable")

    monkeypatch.setattr(store, "apply_lease_changes", down)
    with pytest.raises(OSError):
        pool.flush()
    monkeypatch.undo()
    assert pool.flush() == 1 and store.load_leases("default")[0].identity == "alice"
