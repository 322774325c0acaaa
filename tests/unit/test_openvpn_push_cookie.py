"""PUSH_REPLY bundling (ovpn26 push.c send_push_reply) and the stateless HMAC session-id cookie."""

from __future__ import annotations

import ipaddress

import pytest

from p2sgw.openvpn.cookie import SessionCookie
from p2sgw.openvpn.push import ClientNetworkConfig, build_push_replies

PUSH_BUNDLE_SIZE = 1024  # ovpn26 common.h: the client's buffer for one control message


def split(message: bytes) -> list[str]:
    assert message.endswith(b"\0") and message.count(b"\0") == 1
    text = message[:-1].decode()
    assert text.startswith("PUSH_REPLY,")
    return text[len("PUSH_REPLY,"):].split(",")


# --------------------------------------------------------------------------- push
def test_single_message():
    opts = ["topology subnet", "ifconfig 10.8.0.2 255.255.255.0", "ping 10", "peer-id 3", "cipher AES-256-GCM"]
    out = build_push_replies(opts)
    assert out == [
        (b"PUSH_REPLY,topology subnet,ifconfig 10.8.0.2 255.255.255.0,ping 10,peer-id 3,"
         b"cipher AES-256-GCM\0")
    ]


def test_continuation_split_for_many_routes():
    opts = ["topology subnet", "route-gateway 10.8.0.1", "ifconfig 10.8.0.2 255.255.255.0"]
    opts += [f"route 10.{i // 256}.{i % 256}.0 255.255.255.0" for i in range(300)]
    opts += ["ping 10", "ping-restart 60", "peer-id 1", "cipher AES-256-GCM"]
    out = build_push_replies(opts)
    assert len(out) > 5
    seen: list[str] = []
    for i, message in enumerate(out):
        assert len(message) < PUSH_BUNDLE_SIZE
        parts = split(message)
        flag = 1 if i == len(out) - 1 else 2
        assert parts[-1] == f"push-continuation {flag}"
        assert all("push-continuation" not in p for p in parts[:-1])
        seen += parts[:-1]
    assert seen == opts  # nothing lost, nothing reordered
    assert "topology subnet" in split(out[0])  # ... and it comes before ifconfig


def test_long_options_at_the_bundle_limit():
    opts = [f"setenv-safe X{i} " + "a" * 235 for i in range(20)]
    assert all(len(o) < 256 for o in opts)
    out = build_push_replies(opts)
    assert all(len(m) < PUSH_BUNDLE_SIZE for m in out)
    assert sum(len(split(m)) - 1 for m in out) == 20


@pytest.mark.parametrize("bad", ["dhcp-option DNS 1.1.1.1,8.8.8.8", "x" * 256])
def test_refuses_commas_and_overlong_options(bad):
    with pytest.raises(ValueError):
        build_push_replies(["ping 10", bad])


def test_client_network_config_options():
    cfg = ClientNetworkConfig(
        address=ipaddress.IPv4Address("10.8.0.2"),
        network=ipaddress.IPv4Network("10.8.0.0/24"),
        gateway=ipaddress.IPv4Address("10.8.0.1"),
        routes=[ipaddress.IPv4Network("10.0.0.0/8")],
        dns_servers=["10.0.0.53"],
        dns_domain="corp.example",
    )
    assert cfg.options() == [
        "topology subnet",
        "route-gateway 10.8.0.1",
        "ifconfig 10.8.0.2 255.255.255.0",
        "route 10.0.0.0 255.0.0.0",
        "dhcp-option DNS 10.0.0.53",
        "dhcp-option DOMAIN corp.example",
    ]


# --------------------------------------------------------------------------- cookie
ADDR = ("192.0.2.10", 51820)
SID = bytes(range(8))


def test_cookie_valid_within_three_slots():
    cookie = SessionCookie(hand_window=60, key=b"k" * 32)  # slot = (60 + 1) // 2 = 30 s
    t0 = 1_000_020.0  # start of a slot (1_000_020 / 30 is an integer)
    c = cookie.make(ADDR, SID, t0)
    assert len(c) == 8
    assert cookie.make(ADDR, SID, t0 + 29.9) == c  # same slot, same cookie (stateless, deterministic)
    for dt in (0, 1, 29, 30, 45, 59, 89.9):
        assert cookie.verify(c, ADDR, SID, t0 + dt), dt
    assert not cookie.verify(c, ADDR, SID, t0 + 90)  # the 4th slot: expired
    assert not cookie.verify(c, ADDR, SID, t0 + 10_000)


def test_cookie_from_a_future_slot_is_invalid():
    cookie = SessionCookie(hand_window=60, key=b"k" * 32)
    future = cookie.make(ADDR, SID, 1_000_020.0 + 30)
    assert not cookie.verify(future, ADDR, SID, 1_000_020.0)


def test_cookie_bound_to_address_and_session_id():
    cookie = SessionCookie(hand_window=60, key=b"k" * 32)
    now = 1_000_000.0
    c = cookie.make(ADDR, SID, now)
    assert not cookie.verify(c, ("192.0.2.11", 51820), SID, now)
    assert not cookie.verify(c, ("192.0.2.10", 51821), SID, now)
    assert not cookie.verify(c, ADDR, SID[::-1], now)
    assert not cookie.verify(b"\0" * 8, ADDR, SID, now)
    assert not cookie.verify(c[:7], ADDR, SID, now)


def test_cookie_key_is_per_instance():
    now = 1_000_000.0
    a, b = SessionCookie(60), SessionCookie(60)
    assert not b.verify(a.make(ADDR, SID, now), ADDR, SID, now)
    assert a.verify(a.make(ADDR, SID, now), ADDR, SID, now)

