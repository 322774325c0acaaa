"""Key-method-2 messages and data-channel key derivation (ovpn26 ssl.c, crypto.c).

PRF vector: OpenVPN/openvpn tests/unit_tests/openvpn/test_crypto.c `good_prf` (see openvpn_vectors.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from openvpn_vectors import GOOD_PRF, PRF_SECRET, PRF_SEED

from p2sgw.openvpn.keys import (
    IV_PROTO_DATA_V2,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    KeySource,
    build_server_key_method_2,
    parse_client_key_method_2,
    tls1_prf,
)
from p2sgw.openvpn.packets import PacketError
from p2sgw.openvpn.static_key import Key2


# --------------------------------------------------------------------------- an independent TLS 1.0 PRF (RFC 2246 §5)
def _p_hash(name: str, secret: bytes, seed: bytes, n: int) -> bytes:
    out, a = b"", seed
    while len(out) < n:
        a = hmac.new(secret, a, name).digest()
        out += hmac.new(secret, a + seed, name).digest()
    return out[:n]


def ref_prf(secret: bytes, seed: bytes, n: int) -> bytes:
    ls = (len(secret) + 1) // 2  # RFC 2246: halves overlap by one byte for odd lengths
    s1, s2 = secret[:ls], secret[-ls:]
    return bytes(x ^ y for x, y in zip(_p_hash("md5", s1, seed, n), _p_hash("sha1", s2, seed, n)))


def test_tls1_prf_good_prf_vector():
    # test_crypto.c crypto_test_tls_prf: ssl_tls1_PRF(seed, secret) == good_prf; the secret has odd length 117
    assert len(PRF_SECRET) % 2 == 1
    assert tls1_prf(PRF_SECRET, PRF_SEED, 32) == GOOD_PRF
    assert ref_prf(PRF_SECRET, PRF_SEED, 32) == GOOD_PRF


@pytest.mark.parametrize("secret_len, out_len", [(1, 1), (2, 17), (47, 48), (48, 256), (64, 100), (0, 16)])
def test_tls1_prf_matches_reference_for_many_lengths(secret_len, out_len):
    secret, seed = os.urandom(secret_len), os.urandom(77)
    assert tls1_prf(secret, seed, out_len) == ref_prf(secret, seed, out_len)


def test_tls1_prf_prefix_property():
    long = tls1_prf(PRF_SECRET, PRF_SEED, 256)
    assert long[:32] == GOOD_PRF


# --------------------------------------------------------------------------- legacy key2
def _source() -> KeySource:
    return KeySource(
        client_pre_master=bytes(range(48)),
        client_random1=bytes(range(100, 132)),
        client_random2=bytes(range(140, 172)),
        server_random1=bytes(range(180, 212)),
        server_random2=bytes(range(212, 244)),
    )


def test_legacy_key2_derivation():
    src = _source()
    client_sid, server_sid = b"\x01" * 8, b"\x02" * 8
    key2 = src.legacy_key2(client_sid, server_sid)
    assert isinstance(key2, Key2) and len(key2.raw) == 256
    # ovpn26 ssl.c generate_key_expansion_openvpn_prf()
    master = ref_prf(src.client_pre_master,
                     b"OpenVPN master secret" + src.client_random1 + src.server_random1, 48)
    expected = ref_prf(master, b"OpenVPN key expansion" + src.client_random2 + src.server_random2
                       + client_sid + server_sid, 256)
    assert key2.raw == expected
    # the 256 bytes split into keys[0].cipher | keys[0].hmac | keys[1].cipher | keys[1].hmac
    assert key2.cipher(0) == expected[0:64]
    assert key2.hmac(0) == expected[64:128]
    assert key2.cipher(1) == expected[128:192]
    assert key2.hmac(1) == expected[192:256]


def test_legacy_key2_depends_on_every_input():
    src = _source()
    base = src.legacy_key2(b"\x01" * 8, b"\x02" * 8).raw
    assert src.legacy_key2(b"\x02" * 8, b"\x01" * 8).raw != base  # sid order matters
    for field in ("client_pre_master", "client_random1", "client_random2", "server_random1", "server_random2"):
        other = _source()
        value = bytearray(getattr(other, field))
        value[0] ^= 1
        setattr(other, field, bytes(value))
        assert other.legacy_key2(b"\x01" * 8, b"\x02" * 8).raw != base, field


def test_key_source_server_randoms_are_fresh():
    a = KeySource(b"\0" * 48, b"\0" * 32, b"\0" * 32)
    b = KeySource(b"\0" * 48, b"\0" * 32, b"\0" * 32)
    assert len(a.server_random1) == len(a.server_random2) == 32
    assert a.server_random1 != b.server_random1 and a.server_random1 != a.server_random2


# --------------------------------------------------------------------------- key-method-2 client message
def ovpn_string(text: str | None) -> bytes:
    """ovpn26 ssl.c write_string()/write_empty_string()."""
    if text is None:
        return b"\0\0"
    raw = text.encode() + b"\0"
    return struct.pack("!H", len(raw)) + raw


OPTIONS = ("V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],"
           "keysize 256,key-method 2,tls-client")
PEER_INFO = ("IV_VER=2.6.12\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n"
             "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n"
             "IV_LZ4=1\nIV_SSO=webauth,openurl,crtext\n")


def client_km2(pre_master=b"\x11" * 48, r1=b"\x22" * 32, r2=b"\x33" * 32, options=OPTIONS,
               username="alice", password="s3cret", peer_info=PEER_INFO) -> bytes:
    """ovpn26 ssl.c key_method_2_write() for a client."""
    return (b"\0\0\0\0" + bytes([2]) + pre_master + r1 + r2 + ovpn_string(options)
            + ovpn_string(username) + ovpn_string(password) + ovpn_string(peer_info))


def test_parse_client_key_method_2():
    km2 = parse_client_key_method_2(client_km2())
    assert km2.source.client_pre_master == b"\x11" * 48
    assert km2.source.client_random1 == b"\x22" * 32
    assert km2.source.client_random2 == b"\x33" * 32
    assert km2.options == OPTIONS
    assert km2.username == "alice" and km2.password == "s3cret"
    assert km2.peer_info["IV_VER"] == "2.6.12"
    assert km2.peer_info["IV_SSO"] == "webauth,openurl,crtext"
    assert km2.iv_proto == 990
    assert km2.iv_proto & IV_PROTO_DATA_V2 and km2.iv_proto & IV_PROTO_REQUEST_PUSH
    assert km2.iv_proto & IV_PROTO_TLS_KEY_EXPORT
    assert km2.ciphers == ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]


def test_parse_client_key_method_2_reports_its_length():
    msg = client_km2()
    assert parse_client_key_method_2(msg).length == len(msg)
    # control messages may follow in the same plaintext read: they are not part of the message
    assert parse_client_key_method_2(msg + b"PUSH_REQUEST\0").length == len(msg)


def test_parse_client_key_method_2_without_credentials():
    # a profile without auth-user-pass: write_empty_string() twice (00 00 00 00)
    km2 = parse_client_key_method_2(client_km2(username=None, password=None))
    assert km2.username is None and km2.password is None
    assert km2.iv_proto == 990


def test_parse_client_key_method_2_key_method_byte_high_bits_ignored():
    msg = bytearray(client_km2())
    msg[4] = 0xF2  # KEY_METHOD_MASK 0x0F in ovpn26 ssl.c
    assert parse_client_key_method_2(bytes(msg)).username == "alice"


def test_parse_client_key_method_2_old_peer_without_peer_info():
    msg = b"\0\0\0\0\x02" + b"\0" * 112 + ovpn_string("V4") + ovpn_string(None) + ovpn_string(None)
    km2 = parse_client_key_method_2(msg)
    assert km2.peer_info == {} and km2.iv_proto == 0 and km2.ciphers == []


def test_ciphers_fall_back_to_ncp_defaults():
    km2 = parse_client_key_method_2(client_km2(peer_info="IV_NCP=2\nIV_PROTO=garbage\n"))
    assert km2.ciphers == ["AES-256-GCM", "AES-128-GCM"]
    assert km2.iv_proto == 0


@pytest.mark.parametrize("mutate", [
    lambda m: m[:100],  # truncated fixed part
    lambda m: b"\0\0\0\1" + m[4:],  # not 4 zero bytes
    lambda m: m[:4] + b"\x01" + m[5:],  # key method 1
    lambda m: m[:117] + b"\x00",  # half a string length
    lambda m: m[:117] + b"\x00\x10abc",  # string longer than the message
    lambda m: m[:117] + b"\x00\x03abc",  # string not NUL terminated
], ids=["short", "prefix", "method1", "half-length", "overlong", "no-nul"])
def test_parse_client_key_method_2_rejects(mutate):
    with pytest.raises(PacketError):
        parse_client_key_method_2(mutate(client_km2()))


# --------------------------------------------------------------------------- key-method-2 server message
def test_build_server_key_method_2_layout():
    src = _source()
    options = "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,tls-server"
    msg = build_server_key_method_2(src, options)
    # ovpn26 key_method_2_write() for a server: no pre_master, then randoms, options, 3 empty strings
    assert msg[:4] == b"\0\0\0\0"
    assert msg[4] == 2
    assert msg[5:37] == src.server_random1
    assert msg[37:69] == src.server_random2
    (n,) = struct.unpack_from("!H", msg, 69)
    assert n == len(options) + 1
    assert msg[71:71 + n] == options.encode() + b"\0"
    assert msg[71 + n:] == b"\0\0" * 3
    assert len(msg) == 4 + 1 + 64 + 2 + n + 6
    assert b"\x11" * 48 not in msg and src.client_pre_master not in msg  # never echo the client's secret


def test_server_message_parses_with_client_reader():
    """What an OpenVPN client does with it (key_method_2_read on the client: randoms, then strings)."""
    src = _source()
    msg = build_server_key_method_2(src, "V4,tls-server")
    pos = 5 + 64
    strings = []
    while pos < len(msg):
        (n,) = struct.unpack_from("!H", msg, pos)
        strings.append(msg[pos + 2:pos + 2 + n])
        pos += 2 + n
    assert pos == len(msg)
    assert strings == [b"V4,tls-server\0", b"", b"", b""]


def test_ekm_label():
    from p2sgw.openvpn.keys import EKM_LABEL

    assert EKM_LABEL == b"EXPORTER-OpenVPN-datakeys"
    assert hashlib.sha256(EKM_LABEL).hexdigest()  # bytes, usable as an exporter label
