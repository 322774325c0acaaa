"""RFC 5176 server side: Disconnect-Request / CoA-Request verification and ACK/NAK."""

from __future__ import annotations

import ipaddress

import pytest
from pyrad import packet as pyrad_packet
from radius_helpers import independent_ma

from p2sgw.radius import dynauth
from p2sgw.radius.packet import (
    ACCESS_REQUEST,
    COA_ACK,
    COA_NAK,
    COA_REQUEST,
    DISCONNECT_ACK,
    DISCONNECT_NAK,
    DISCONNECT_REQUEST,
    RadiusPacket,
    dictionary,
    encode_request,
    verify_reply,
)

SECRET = b"coa-secret"
NOW = 1_700_000_000
ADDR = ("192.0.2.10", 40000)


def disconnect(attrs=None, secret=SECRET, code=DISCONNECT_REQUEST, ma=True, ts=NOW):
    attrs = list(attrs if attrs is not None else [("User-Name", "alice"),
                                                  ("Acct-Session-Id", "OVPN_1")])
    if ts is not None:
        attrs.append(("Event-Timestamp", ts))
    raw, _ = encode_request(code, 17, secret, attrs, message_authenticator=ma)
    return raw


def test_disconnect_request_parses_and_is_acked():
    raw = disconnect([("User-Name", "alice"), ("Acct-Session-Id", "OVPN_1"),
                      ("Framed-IP-Address", "172.16.201.5"), ("NAS-Identifier", "p2sgw"),
                      ("Proxy-State", b"ps1"), ("Proxy-State", b"ps2")])
    assert raw[20] == 80
    assert raw[22:38] == independent_ma(raw, SECRET, bytes(16))
    req = dynauth.parse_request(raw, SECRET, NOW + 5, addr=ADDR)
    assert req.is_disconnect and not req.is_coa and req.addr == ADDR
    assert req.user_name == "alice" and req.acct_session_id == "OVPN_1"
    assert req.framed_ip == ipaddress.IPv4Address("172.16.201.5")
    assert req.nas_identifier == "p2sgw" and req.event_timestamp == NOW
    assert req.identifies_session
    assert dynauth.check_nas_identity(req, "p2sgw") is None
    ack = dynauth.build_response(req, True, SECRET)
    assert ack[0] == DISCONNECT_ACK and ack[1] == 17 and ack[20] == 80
    assert verify_reply(ack, request_code=DISCONNECT_REQUEST, identifier=17,
                        request_authenticator=req.authenticator, secret=SECRET,
                        proxy_state=[b"ps1", b"ps2"]) is None
    assert ack[22:38] == independent_ma(ack, SECRET, req.authenticator)
    assert RadiusPacket.decode(ack).values("Proxy-State") == [b"ps1", b"ps2"]


def test_nak_with_error_cause():
    req = dynauth.parse_request(disconnect(), SECRET, NOW)
    nak = dynauth.build_response(req, False, SECRET, dynauth.SESSION_CONTEXT_NOT_FOUND)
    assert nak[0] == DISCONNECT_NAK
    pkt = RadiusPacket.decode(nak)
    assert pkt.values("Error-Cause") == [(503).to_bytes(4, "big")]
    assert pkt.get("Error-Cause") == ["Session-Context-Not-Found"]
    assert verify_reply(nak, request_code=DISCONNECT_REQUEST, identifier=17,
                        request_authenticator=req.authenticator, secret=SECRET) is None


def test_coa_session_timeout():
    raw = disconnect([("Acct-Session-Id", "OVPN_2"), ("Session-Timeout", 600)], code=COA_REQUEST)
    req = dynauth.parse_request(raw, SECRET, NOW)
    assert req.is_coa and req.session_timeout == 600
    assert dynauth.build_response(req, True, SECRET)[0] == COA_ACK
    assert dynauth.build_response(req, False, SECRET, dynauth.UNSUPPORTED_SERVICE)[0] == COA_NAK


def test_request_built_by_pyrad_like_radclient():
    pkt = pyrad_packet.CoAPacket(code=DISCONNECT_REQUEST, id=3, secret=SECRET, dict=dictionary())
    pkt.add_message_authenticator()
    pkt["User-Name"] = "bob"
    pkt["Event-Timestamp"] = NOW
    req = dynauth.parse_request(pkt.RequestPacket(), SECRET, NOW)
    assert req.user_name == "bob"
    reply = dynauth.build_response(req, True, SECRET)
    decoded = pyrad_packet.CoAPacket(packet=reply, secret=SECRET, dict=dictionary())
    assert pkt.VerifyReply(decoded, reply)


@pytest.mark.parametrize("raw, now, reason", [
    (disconnect(secret=b"other"), NOW, "bad Request Authenticator"),
    (disconnect(ma=False), NOW, "missing Message-Authenticator"),
    (disconnect(ts=NOW - 301), NOW, "stale Event-Timestamp"),
    (disconnect(ts=NOW + 301), NOW, "stale Event-Timestamp"),
    (encode_request(ACCESS_REQUEST, 1, SECRET, [("User-Name", "x")])[0], NOW, "not a Disconnect"),
    (b"\x28\x01\x00", NOW, "malformed"),
])
def test_requests_that_are_discarded(raw, now, reason):
    with pytest.raises(dynauth.DynAuthError) as info:
        dynauth.parse_request(raw, SECRET, now)
    assert info.value.reason.startswith(reason)


def test_forged_message_authenticator_with_valid_request_authenticator():
    import hashlib
    raw = bytearray(disconnect())
    raw[22:38] = bytes(16)
    raw[4:20] = hashlib.md5(bytes(raw[:4]) + bytes(16) + bytes(raw[20:]) + SECRET).digest()
    with pytest.raises(dynauth.DynAuthError, match="bad Message-Authenticator"):
        dynauth.parse_request(bytes(raw), SECRET, NOW)


def test_event_timestamp_policy():
    raw = disconnect(ts=None)
    assert dynauth.parse_request(raw, SECRET, NOW).event_timestamp is None
    with pytest.raises(dynauth.DynAuthError, match="missing Event-Timestamp"):
        dynauth.parse_request(raw, SECRET, NOW, require_event_timestamp=True)
    assert dynauth.parse_request(disconnect(ts=NOW - 3000), SECRET, NOW, max_skew=float("inf"))
    assert dynauth.parse_request(disconnect(ma=False), SECRET, NOW,
                                 require_message_authenticator=False)


def test_nas_identity():
    req = dynauth.parse_request(disconnect([("User-Name", "a"), ("NAS-Identifier", "other-gw"),
                                            ("NAS-IP-Address", "198.51.100.1")]), SECRET, NOW)
    assert dynauth.check_nas_identity(req, "p2sgw") == dynauth.NAS_IDENTIFICATION_MISMATCH
    assert dynauth.check_nas_identity(req, "other-gw", ["198.51.100.1"]) is None
    assert dynauth.check_nas_identity(req, "other-gw", ["198.51.100.2"]) == 403
    assert dynauth.check_nas_identity(req, None) is None
    bad = dynauth.parse_request(disconnect([("NAS-IP-Address", b"\x01\x02")]), SECRET, NOW)
    assert dynauth.check_nas_identity(bad, None, ["198.51.100.1"]) == dynauth.INVALID_ATTRIBUTE_VALUE
    assert not bad.identifies_session


def test_response_cache():
    cache = dynauth.ResponseCache(lifetime=30)
    raw = disconnect()
    key = cache.key(ADDR, raw)
    assert cache.lookup(key, NOW) == (False, None)
    cache.begin(key, NOW)
    assert cache.lookup(key, NOW + 1) == (True, None)  # in progress: drop the duplicate
    cache.finish(key, b"reply", NOW + 1)
    assert cache.lookup(key, NOW + 2) == (True, b"reply")
    assert cache.lookup(cache.key(("192.0.2.11", 40000), raw), NOW + 2) == (False, None)
    assert cache.lookup(key, NOW + 40) == (False, None)  # expired
