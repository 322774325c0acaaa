"""RADIUS packet coding: RFC 2865 §7.1 vectors, Message-Authenticator, reply verification, MPPE keys."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from pyrad import packet as pyrad_packet
from radius_helpers import (
    RFC_REQUEST_AUTHENTICATOR,
    SECRET,
    answer,
    independent_ma,
    message_authenticator_offset,
    resign,
)

from p2sgw.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    ACCOUNTING_RESPONSE,
    ZERO_AUTHENTICATOR,
    PacketError,
    RadiusPacket,
    RadiusReply,
    dictionary,
    encode_reply,
    encode_request,
    hide_password,
    mppe_decrypt_key,
    mppe_encrypt_key,
    recover_password,
    split_attributes,
    verify_reply,
    verify_request,
)

RA = RFC_REQUEST_AUTHENTICATOR
# RFC 2865 §7.1: "nemo"/"arctangent" from NAS 192.168.1.16 port 3
RFC_ACCESS_REQUEST = bytes.fromhex(
    "010000380f403f9473978057bd83d5cb98f4227a01066e656d6f02120dbe708d93d413ce3196e43f782a0aee"
    "0406c0a80110050600000003")
RFC_ACCESS_ACCEPT = bytes.fromhex(
    "0200002686fe220e7624ba2a1005f6bf9b55e0b20606000000010f06000000000e06c0a80103")


def signed_request(attrs=(("User-Name", "alice"), ("User-Password", "secret"))):
    return encode_request(ACCESS_REQUEST, 42, SECRET, list(attrs), authenticator=RA)


# ---- RFC 2865 §7.1 -----------------------------------------------------------------------------


def test_user_password_hiding_rfc2865_vector():
    hidden = hide_password("arctangent", SECRET, RA)
    assert hidden.hex() == "0dbe708d93d413ce3196e43f782a0aee"
    assert recover_password(hidden, SECRET, RA) == "arctangent"


def test_long_password_is_chained_over_blocks():
    pw = "p" * 40
    hidden = hide_password(pw, SECRET, RA)
    assert len(hidden) == 48
    b1 = hashlib.md5(SECRET + RA).digest()
    assert bytes(a ^ b for a, b in zip(hidden[:16], b1)) == b"p" * 16
    b2 = hashlib.md5(SECRET + hidden[:16]).digest()
    assert bytes(a ^ b for a, b in zip(hidden[16:32], b2)) == b"p" * 16
    assert recover_password(hidden, SECRET, RA) == pw
    with pytest.raises(ValueError):
        hide_password("x" * 129, SECRET, RA)


def test_access_request_rfc2865_vector():
    raw, auth = encode_request(
        ACCESS_REQUEST, 0, SECRET,
        [("User-Name", "nemo"), ("User-Password", "arctangent"), ("NAS-IP-Address", "192.168.1.16"),
         ("NAS-Port", 3)], authenticator=RA, message_authenticator=False)
    assert raw == RFC_ACCESS_REQUEST
    assert auth == RA


def test_response_authenticator_rfc2865_vector():
    reply = encode_reply(ACCESS_ACCEPT, 0, RA, SECRET,
                         [("Service-Type", "Login-User"), ("Login-Service", 0),
                          ("Login-IP-Host", "192.168.1.3")], message_authenticator=False)
    assert reply == RFC_ACCESS_ACCEPT
    assert reply[4:20].hex() == "86fe220e7624ba2a1005f6bf9b55e0b2"
    kwargs = dict(request_code=ACCESS_REQUEST, identifier=0, request_authenticator=RA, secret=SECRET)
    assert verify_reply(RFC_ACCESS_ACCEPT, require_message_authenticator=False, **kwargs) is None
    # The RFC's reply has no Message-Authenticator: by default (BlastRADIUS) it is refused.
    assert verify_reply(RFC_ACCESS_ACCEPT, **kwargs) == "missing Message-Authenticator"
    assert verify_reply(RFC_ACCESS_ACCEPT, require_message_authenticator=False,
                        **{**kwargs, "secret": b"wrong"}) == "bad Response Authenticator"


# ---- Message-Authenticator -----------------------------------------------------------------------


def test_message_authenticator_is_first_and_correct():
    raw, auth = signed_request([("User-Name", "alice"), ("User-Password", "pw"),
                                ("Calling-Station-Id", "192.0.2.7")])
    assert raw[20] == 80 and raw[21] == 18  # first attribute
    assert message_authenticator_offset(raw) == 22
    assert raw[22:38] == independent_ma(raw, SECRET, auth)
    # and pyrad agrees, as a server would check it
    pkt = pyrad_packet.AuthPacket(packet=raw, secret=SECRET, dict=dictionary())
    assert pkt.verify_message_authenticator()


def test_accounting_request_authenticator_and_optional_ma():
    raw, auth = encode_request(ACCOUNTING_REQUEST, 9, SECRET,
                               [("Acct-Status-Type", "Start"), ("Acct-Session-Id", "s1")])
    assert auth == hashlib.md5(raw[:4] + ZERO_AUTHENTICATOR + raw[20:] + SECRET).digest()
    assert 80 not in dict(split_attributes(raw[20:]))
    assert verify_request(raw, SECRET, require_message_authenticator=False) is None
    assert verify_request(raw, SECRET) == "missing Message-Authenticator"
    signed, _ = encode_request(ACCOUNTING_REQUEST, 9, SECRET, [("Acct-Status-Type", "Stop")],
                               message_authenticator=True)
    assert signed[20] == 80
    assert verify_request(signed, SECRET) is None
    assert signed[22:38] == independent_ma(signed, SECRET, ZERO_AUTHENTICATOR)
    assert verify_request(signed, b"other") == "bad Request Authenticator"


def test_valid_signed_reply_verifies():
    raw, auth = signed_request()
    reply = answer(raw, SECRET, attributes=[("Reply-Message", "welcome")])
    assert reply[20] == 80
    assert reply[22:38] == independent_ma(reply, SECRET, auth)
    assert verify_reply(reply, request_code=ACCESS_REQUEST, identifier=42,
                        request_authenticator=auth, secret=SECRET) is None


@pytest.mark.parametrize("tamper, reason", [
    ("no_ma", "missing Message-Authenticator"),
    ("wrong_ma", "bad Message-Authenticator"),
    ("ma_other_secret", "bad Message-Authenticator"),
    ("two_ma", "more than one Message-Authenticator"),
    ("short_ma", "Message-Authenticator of 15 octets"),
    ("wrong_ra", "bad Response Authenticator"),
    ("wrong_id", "identifier mismatch"),
    ("wrong_code", "unexpected code 5 for Access-Request"),
    ("proxy_state", "unexpected Proxy-State"),
    ("truncated", "malformed"),
])
def test_invalid_replies_are_refused(tamper, reason):
    raw, auth = signed_request()
    good = answer(raw, SECRET)
    if tamper == "no_ma":
        bad = answer(raw, SECRET, message_authenticator=False)
    elif tamper == "wrong_ma":
        bad = resign(good[:22] + bytes(16) + good[38:], auth, SECRET)  # RA valid, M-A not
    elif tamper == "ma_other_secret":
        other = encode_reply(ACCESS_ACCEPT, 42, auth, b"attacker")
        bad = resign(other, auth, SECRET)
    elif tamper == "two_ma":
        body = good[20:] + good[20:38]
        bad = resign(good[:2] + (20 + len(body)).to_bytes(2, "big") + good[4:20] + body, auth, SECRET)
    elif tamper == "short_ma":
        body = bytes([80, 17]) + bytes(15)
        bad = resign(good[:2] + (20 + len(body)).to_bytes(2, "big") + good[4:20] + body, auth, SECRET)
    elif tamper == "wrong_ra":
        bad = good[:4] + bytes(16) + good[20:]
    elif tamper == "wrong_id":
        bad = good[:1] + b"\x07" + good[2:]
    elif tamper == "wrong_code":
        bad = resign(bytes([ACCOUNTING_RESPONSE]) + good[1:], auth, SECRET)
    elif tamper == "proxy_state":
        bad = answer(raw, SECRET, attributes=[("Proxy-State", b"blast")])
    else:
        bad = good[:-1]
    got = verify_reply(bad, request_code=ACCESS_REQUEST, identifier=42,
                       request_authenticator=auth, secret=SECRET)
    assert got is not None and got.startswith(reason)


def test_accounting_response_needs_no_ma_but_a_present_one_must_be_valid():
    _, auth = encode_request(ACCOUNTING_REQUEST, 3, SECRET, [("Acct-Status-Type", "Start")])
    kwargs = dict(request_code=ACCOUNTING_REQUEST, identifier=3, request_authenticator=auth,
                  secret=SECRET)
    plain = encode_reply(ACCOUNTING_RESPONSE, 3, auth, SECRET, message_authenticator=False)
    assert verify_reply(plain, **kwargs) is None
    signed = encode_reply(ACCOUNTING_RESPONSE, 3, auth, SECRET)  # pyrad/FreeRADIUS: zero vector
    assert verify_reply(signed, **kwargs) is None
    broken = resign(signed[:22] + bytes(16) + signed[38:], auth, SECRET)
    assert verify_reply(broken, **kwargs) == "bad Message-Authenticator"


# ---- values --------------------------------------------------------------------------------------


def test_bytes_are_wire_values_even_if_they_look_like_hex():
    raw, _ = signed_request([("User-Name", "u"), ("State", b"0x4142"), ("Class", b"0x00")])
    pkt = RadiusPacket.decode(raw)
    assert pkt.values("State") == [b"0x4142"]
    assert pkt.values(25) == [b"0x00"]


def test_vendor_attribute_encoding_and_lookup():
    value = bytes(range(50))
    raw, _ = signed_request([("User-Name", "u"), ("MS-CHAP2-Response", value),
                             ("MS-CHAP-Challenge", b"c" * 16)])
    attrs = split_attributes(raw[20:])
    vsas = [v for t, v in attrs if t == 26]
    assert vsas[0] == b"\x00\x00\x01\x37" + bytes([25, 52]) + value
    pkt = RadiusPacket.decode(raw)
    assert pkt.vendor(311, 25) == [value]
    assert pkt.values((311, 11)) == [b"c" * 16]
    assert pkt.get("MS-CHAP2-Response") == [value]


def test_eap_message_is_split_and_forces_message_authenticator():
    eap = bytes([2, 7]) + (600).to_bytes(2, "big") + bytes(range(256)) * 2 + bytes(84)
    raw, _ = encode_request(ACCESS_REQUEST, 1, SECRET, [("User-Name", "u"), ("EAP-Message", eap)],
                            message_authenticator=False)
    attrs = split_attributes(raw[20:])
    assert attrs[0][0] == 80  # RFC 3579 §3.2: required with EAP-Message
    pieces = [v for t, v in attrs if t == 79]
    assert [len(p) for p in pieces] == [253, 253, 94]
    reply = RadiusReply.decode(raw)
    assert reply.eap_message == eap


def test_encode_errors():
    with pytest.raises(KeyError):
        encode_request(ACCESS_REQUEST, 1, SECRET, [("No-Such-Attribute", "x")])
    with pytest.raises(ValueError):
        encode_request(ACCESS_REQUEST, 1, SECRET, [(250, "not bytes")])
    with pytest.raises(ValueError):
        encode_request(ACCESS_REQUEST, 1, SECRET, [("Class", b"x" * 254)])
    with pytest.raises(ValueError):
        encode_request(ACCESS_REQUEST, 1, SECRET, [("Message-Authenticator", bytes(16))])
    with pytest.raises(ValueError):
        encode_request(ACCESS_REQUEST, 1, SECRET, [("Session-Timeout", "soon")])
    with pytest.raises(ValueError):
        encode_request(ACCOUNTING_REQUEST, 1, SECRET, [("User-Password", "x")])
    with pytest.raises(ValueError):
        encode_request(ACCESS_REQUEST, 1, SECRET, [("Class", b"x" * 250)] * 17)  # > 4096 octets
    raw, _ = encode_request(ACCESS_REQUEST, 1, SECRET, [(250, b"raw"), ((9999, 1), b"vsa")])
    pkt = RadiusPacket.decode(raw)
    assert pkt.values(250) == [b"raw"] and pkt.vendor(9999, 1) == [b"vsa"]


def test_reply_accessors():
    raw, auth = signed_request()
    send_key, recv_key = bytes(range(16)), bytes(range(16, 32))
    reply_bytes = answer(raw, SECRET, ACCESS_ACCEPT, [
        ("Reply-Message", "line 1"), ("Reply-Message", "line 2"),
        ("State", b"\x00st"), ("Class", b"group-a"), ("Class", b"\x01\x02"),
        ("Framed-IP-Address", "172.16.201.77"), ("Session-Timeout", 3600), ("Idle-Timeout", 600),
        ("Acct-Interim-Interval", 300), ("Service-Type", "Framed-User"),
        ("MS-MPPE-Send-Key", mppe_encrypt_key(send_key, SECRET, auth)),
        ("MS-MPPE-Recv-Key", mppe_encrypt_key(recv_key, SECRET, auth)),
        ("MS-CHAP2-Success", b"\x05S=" + b"A" * 40),
        ((9, 1), b"cisco-avpair"),
    ])
    reply = RadiusReply.decode(reply_bytes, secret=SECRET, request_authenticator=auth)
    assert reply.accepted and not reply.rejected and not reply.challenged
    assert reply.reply_messages == ["line 1", "line 2"]
    assert reply.reply_message == "line 1\nline 2"
    assert reply.state == b"\x00st"
    assert reply.class_values == [b"group-a", b"\x01\x02"]
    assert reply.framed_ip == ipaddress.IPv4Address("172.16.201.77")
    assert (reply.session_timeout, reply.idle_timeout, reply.acct_interim_interval) == (3600, 600, 300)
    assert reply.get("Service-Type") == ["Framed-User"]
    assert reply.first("Session-Timeout") == 3600
    assert reply.first("Framed-Pool", "none") == "none"
    assert reply.mppe_send_key == send_key and reply.mppe_recv_key == recv_key
    assert reply.get("MS-MPPE-Send-Key") == [send_key]
    assert reply.msk == recv_key + send_key + bytes(32)
    assert reply.ms_chap2_success == b"\x05S=" + b"A" * 40
    assert reply.ms_chap_error is None
    assert reply.vendor(9, 1) == [b"cisco-avpair"]
    assert reply.group_values("vendor:9:1") == [b"cisco-avpair"]
    assert reply.group_values("Class") == [b"group-a", b"\x01\x02"]
    names = [name for name, _ in reply.items()]
    assert "MS-MPPE-Send-Key" in names and "Vendor-9-Attr-1" in names
    assert dict(reply.items())["MS-MPPE-Send-Key"] == "<hidden>"


def test_framed_ip_nas_assigns_and_challenge():
    raw, _ = signed_request()
    reply = RadiusReply.decode(answer(raw, SECRET, ACCESS_CHALLENGE, [
        ("Framed-IP-Address", "255.255.255.254"), ("Reply-Message", "OTP?"), ("State", b"s1")]))
    assert reply.challenged and reply.framed_ip is None
    assert reply.reply_message == "OTP?" and reply.state == b"s1"


def test_undecodable_values_raise_packet_error_only():
    raw, auth = signed_request()
    reply = RadiusReply.decode(answer(raw, SECRET, ACCESS_ACCEPT, [
        (27, b"\x01\x02"), (8, b"\x01"), ((311, 16), b"\x80\x00" + bytes(5))]),
        secret=SECRET, request_authenticator=auth)
    for getter in (lambda: reply.session_timeout, lambda: reply.framed_ip,
                   lambda: reply.mppe_send_key, lambda: reply.get("Session-Timeout"),
                   lambda: reply.get("Framed-IP-Address")):
        with pytest.raises(PacketError):
            getter()
    assert reply.items()  # still printable


@pytest.mark.parametrize("data, reason", [
    (b"", "shorter"),
    (b"\x02\x01\x00\x13" + bytes(16), "invalid Length"),
    (b"\x02\x01\x00\x20" + bytes(16), "exceeds the datagram"),
    (b"\x02\x01\x00\x16" + bytes(16) + b"\x01\x01", "length 1"),
    (b"\x02\x01\x00\x17" + bytes(16) + b"\x01\x05x", "runs past"),
    (b"\x02\x01\x00\x15" + bytes(16) + b"\x01", "truncated attribute header"),
])
def test_malformed_packets(data, reason):
    with pytest.raises(PacketError, match=reason):
        RadiusPacket.decode(data)


def test_padding_after_length_is_ignored():
    raw, _ = signed_request()
    pkt = RadiusPacket.decode(raw + b"padding")
    assert pkt.raw == raw


# ---- MPPE keys (RFC 2548 §2.4.2) -------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32, 0, 15, 255])
def test_mppe_key_roundtrip(size):
    key = bytes((7 * i + 3) & 0xFF for i in range(size))
    value = mppe_encrypt_key(key, SECRET, RA)
    assert value[0] & 0x80  # salt MSB set
    assert (len(value) - 2) % 16 == 0
    assert mppe_decrypt_key(value, SECRET, RA) == key
    assert mppe_decrypt_key(mppe_encrypt_key(key, SECRET, RA, salt=b"\x01\x02"), SECRET, RA) == key


def test_mppe_key_by_hand_and_against_pyrad():
    key, salt = b"K" * 16, b"\x81\x23"
    value = mppe_encrypt_key(key, SECRET, RA, salt=salt)
    plain = bytes([16]) + key + bytes(15)
    b1 = hashlib.md5(SECRET + RA + salt).digest()
    c1 = bytes(a ^ b for a, b in zip(plain[:16], b1))
    b2 = hashlib.md5(SECRET + c1).digest()
    c2 = bytes(a ^ b for a, b in zip(plain[16:], b2))
    assert value == salt + c1 + c2
    # pyrad's salt decryption (RFC 2868 §3.5, the same construction) reads ours, and vice versa
    pkt = pyrad_packet.Packet(id=0, secret=SECRET, dict=dictionary())
    pkt.request_authenticator = RA
    assert pkt.SaltDecrypt(value) == key
    assert mppe_decrypt_key(pkt.SaltCrypt(b"k" * 32), SECRET, RA) == b"k" * 32


def test_mppe_key_malformed():
    with pytest.raises(PacketError):
        mppe_decrypt_key(b"\x80\x00" + bytes(15), SECRET, RA)
    value = mppe_encrypt_key(b"k" * 16, SECRET, RA)
    with pytest.raises(PacketError):
        mppe_decrypt_key(value[:-16], SECRET, RA)  # declared length 16 > 15 octets left
