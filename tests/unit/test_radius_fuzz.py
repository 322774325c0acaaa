"""Hypothesis fuzzing of the RADIUS decoders.

Contract: whatever bytes arrive, decoding either succeeds or raises a RadiusError subclass
(PacketError, DynAuthError); verification returns a reason or None; the client core turns a bad
datagram into a Dropped event and keeps the request pending. Derandomized, so runs reproduce.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from radius_helpers import answer

from p2sgw.radius import dynauth, mschap
from p2sgw.radius.client import Dropped, RadiusClient, Response, Server
from p2sgw.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_REQUEST,
    RadiusError,
    RadiusPacket,
    RadiusReply,
    dictionary,
    encode_request,
    verify_reply,
    verify_request,
)

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SECRET = b"fuzz-secret"
NAMES = sorted(dictionary().attributes)
REQ_AUTH = bytes(range(16))


def attribute():
    plain = st.tuples(st.integers(1, 255), st.binary(max_size=40))
    vsa = st.tuples(st.just(26), st.builds(
        lambda vid, subs: vid.to_bytes(4, "big") + b"".join(bytes([t, len(v) + 2]) + v
                                                            for t, v in subs),
        st.sampled_from([311, 9, 0, 2**32 - 1]),
        st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=30)), max_size=3)))
    return st.one_of(plain, vsa)


def assemble(code, ident, auth, attrs, extra=b""):
    body = b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)
    return bytes([code, ident]) + (20 + len(body)).to_bytes(2, "big") + auth + body + extra


structured = st.builds(assemble, st.integers(0, 255), st.integers(0, 255), st.binary(min_size=16, max_size=16),
                       st.lists(attribute(), max_size=12), st.binary(max_size=4))
datagrams = st.one_of(st.binary(max_size=300), structured)


def exercise(pkt: RadiusReply) -> None:
    for name in NAMES:
        try:
            pkt.get(name)
        except RadiusError:
            pass
    for prop in ("framed_ip", "session_timeout", "idle_timeout", "acct_interim_interval",
                 "mppe_send_key", "mppe_recv_key", "msk"):
        try:
            getattr(pkt, prop)
        except RadiusError:
            pass
    assert isinstance(pkt.items(), list)
    repr(pkt)
    _ = (pkt.reply_message, pkt.state, pkt.class_values, pkt.eap_message, pkt.ms_chap2_success,
         pkt.ms_chap_error, pkt.group_values("vendor:311:26"), pkt.code_name)
    for value in (pkt.ms_chap2_success, pkt.ms_chap_error):
        if value is None:
            continue
        for parse in (mschap.parse_ms_chap2_success, mschap.parse_ms_chap_error):
            try:
                parse(value)
            except RadiusError:
                pass
        mschap.check_ms_chap2_success(value, value[0] if value else 0)


@FUZZ
@given(datagrams)
@example(b"\x02\x00\x00\x14" + bytes(16))
@example(b"\x02\x00\x00\x1a" + bytes(16) + b"\x1a\x06\x00\x00\x01\x37")
def test_decoder_only_raises_packet_error(data):
    try:
        pkt = RadiusReply.decode(data, secret=SECRET, request_authenticator=REQ_AUTH)
    except RadiusError:
        return
    exercise(pkt)


@FUZZ
@given(datagrams, st.sampled_from([1, 4, 12, 40, 43, 99]), st.integers(0, 255))
def test_verifiers_never_raise(data, request_code, ident):
    reason = verify_reply(data, request_code=request_code, identifier=ident,
                          request_authenticator=REQ_AUTH, secret=SECRET)
    assert reason is None or isinstance(reason, str)
    reason = verify_request(data, SECRET)
    assert reason is None or isinstance(reason, str)


@FUZZ
@given(datagrams)
def test_dynauth_parse_only_raises_dynauth_error(data):
    try:
        req = dynauth.parse_request(data, SECRET, 1_700_000_000.0, require_message_authenticator=False)
    except dynauth.DynAuthError:
        return
    try:
        dynauth.check_nas_identity(req, "p2sgw", ["192.0.2.1"])
        _ = (req.user_name, req.acct_session_id, req.identifies_session, req.state)
        _ = (req.framed_ip, req.session_timeout, req.event_timestamp)
    except RadiusError:
        pass
    dynauth.build_response(req, False, SECRET, dynauth.INVALID_REQUEST)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["Class", "State", "Reply-Message", "Session-Timeout",
                                           "Framed-IP-Address", "MS-CHAP2-Success", 250]),
                          st.binary(max_size=60)), max_size=10))
def test_structured_roundtrip(attrs):
    raw, _ = encode_request(ACCESS_REQUEST, 5, SECRET, [("User-Name", "u")] + attrs,
                            authenticator=REQ_AUTH)
    pkt = RadiusPacket.decode(raw)
    for key in {k for k, _ in attrs}:
        assert pkt.values(key) == [v for k, v in attrs if k == key]


@FUZZ
@given(datagrams)
def test_client_drops_garbage_from_the_server_and_keeps_waiting(data):
    server = Server("192.0.2.10", 1812, 1813, SECRET)
    client = RadiusClient([server], timeout=10, retries=1, dead_time=30)
    client.send_request(ACCESS_REQUEST, [("User-Name", "u"), ("User-Password", "p")], 0.0)
    [(request, addr)] = client.datagrams_to_send()
    # give the fuzzer a real chance to hit the pending identifier
    data = data[:1] + request[1:2] + data[2:] if len(data) > 2 else data
    client.receive_datagram(data, addr, 1.0)
    event = client.next_event()
    assert isinstance(event, Dropped)
    assert client.next_event() is None
    client.receive_datagram(answer(request, SECRET, ACCESS_ACCEPT), addr, 2.0)
    assert isinstance(client.next_event(), Response)


@FUZZ
@given(st.integers(0, 99), st.integers(0, 7))
def test_any_bit_flip_in_a_signed_reply_is_refused(pos, bit):
    raw, auth = encode_request(ACCESS_REQUEST, 9, SECRET, [("User-Name", "u")], authenticator=REQ_AUTH)
    reply = answer(raw, SECRET, ACCESS_ACCEPT, [("Reply-Message", "hello"), ("Class", b"c1")])
    pos %= len(reply)
    flipped = bytearray(reply)
    flipped[pos] ^= 1 << bit
    assert verify_reply(bytes(flipped), request_code=ACCESS_REQUEST, identifier=9,
                        request_authenticator=auth, secret=SECRET) is not None
