"""Control-packet layout and tls-crypt / tls-auth wrapping, checked against OpenVPN's own test packets.

Vectors: OpenVPN/openvpn tests/unit_tests/openvpn/test_pkt.c (see openvpn_vectors.py).
"""

from __future__ import annotations

import struct

import pytest
from openvpn_vectors import (
    CLIENT_ACK_NONE_RANDOM_ID,
    CLIENT_ACK_TLS_AUTH_RANDOMID,
    CLIENT_CONTROL_WITH_ACK,
    CLIENT_RESET_V2_NONE,
    CLIENT_RESET_V2_TLS_AUTH,
    CLIENT_RESET_V2_TLS_CRYPT,
    TEST_PKT_STATIC_KEY,
)

from p2sgw.openvpn.packets import (
    P_ACK_V1,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_SERVER_V2,
    P_CONTROL_V1,
    ControlPacket,
    PacketError,
    key_id_of,
    op_byte,
    opcode_of,
    parse_body,
    split_header,
)
from p2sgw.openvpn.static_key import (
    Key2,
    format_static_key,
    generate_static_key,
    parse_static_key,
)
from p2sgw.openvpn.tls_wrap import TlsAuth, TlsCrypt, WrapError


@pytest.fixture(scope="module")
def key() -> Key2:
    return parse_static_key(TEST_PKT_STATIC_KEY)


def parse(packet: bytes, body: bytes) -> ControlPacket:
    opcode, key_id, sid = split_header(packet)
    return parse_body(opcode, key_id, sid, body)


# --------------------------------------------------------------------------- static key
def test_static_key_parses_inline_block_and_roundtrips(key):
    assert key.raw[:16].hex() == "37268ea8f95d7f71f9fb8fc03770c460"
    assert key.raw[-16:].hex() == "2b4126b999005ade802797b0eeb8b9e6"
    assert key.cipher(0) == key.raw[0:64] and key.hmac(0) == key.raw[64:128]
    assert key.cipher(1) == key.raw[128:192] and key.hmac(1) == key.raw[192:256]
    assert parse_static_key(format_static_key(key)) == key
    fresh = generate_static_key()
    assert parse_static_key(format_static_key(fresh)) == fresh


# --------------------------------------------------------------------------- plain packet layout
def test_opcode_byte():
    assert op_byte(P_CONTROL_HARD_RESET_CLIENT_V2, 0) == 0x38
    assert op_byte(P_CONTROL_V1, 0) == 0x20
    assert op_byte(P_ACK_V1, 0) == 0x28
    assert op_byte(9, 3) == 0x4B
    assert opcode_of(0x4B) == 9 and key_id_of(0x4B) == 3


def test_unwrapped_reset_none_vector():
    packet = parse(CLIENT_RESET_V2_NONE, CLIENT_RESET_V2_NONE[9:])
    assert packet.opcode == P_CONTROL_HARD_RESET_CLIENT_V2 and packet.key_id == 0
    assert packet.session_id.hex() == "6891923fa3103437"
    assert packet.acks == [] and packet.packet_id == 0 and packet.payload == b""
    assert packet.header() + packet.body() == CLIENT_RESET_V2_NONE


def test_unwrapped_control_with_ack_vector():
    # test_pkt.c test_parse_ack: ack.len 1, ack.packet_id[0] 0, sid eafebfa4418ae31b
    packet = parse(CLIENT_CONTROL_WITH_ACK, CLIENT_CONTROL_WITH_ACK[9:])
    assert packet.opcode == P_CONTROL_V1
    assert packet.acks == [0]
    assert packet.remote_session_id == bytes([0xEA, 0xFE, 0xBF, 0xA4, 0x41, 0x8A, 0xE3, 0x1B])
    assert packet.packet_id == 1 and packet.payload == b"\x16\x03\x01"
    assert packet.header() + packet.body() == CLIENT_CONTROL_WITH_ACK


def test_unwrapped_ack_vector():
    packet = parse(CLIENT_ACK_NONE_RANDOM_ID, CLIENT_ACK_NONE_RANDOM_ID[9:])
    assert packet.opcode == P_ACK_V1 and packet.acks == [0] and packet.packet_id is None
    assert packet.remote_session_id == bytes([0xDD, 0x85, 0xDB, 0x53, 0x56, 0x23, 0xB0, 0x2E])
    assert packet.header() + packet.body() == CLIENT_ACK_NONE_RANDOM_ID


@pytest.mark.parametrize(
    "opcode, body",
    [
        (P_CONTROL_V1, b""),  # empty body
        (P_CONTROL_V1, b"\x09" + b"\0" * 100),  # more acks than allowed
        (P_CONTROL_V1, b"\x01\0\0\0\0"),  # ack block without remote sid
        (P_CONTROL_V1, b"\x00\0\0"),  # truncated message packet id
        (P_ACK_V1, b"\x00"),  # ACK without acks
        (P_ACK_V1, b"\x01" + b"\0" * 12 + b"x"),  # trailing bytes after ACK
        (P_DATA_V1 := 6, b"\x00\0\0\0\0"),  # not a control opcode
        (1, b"\x00\0\0\0\0"),  # key-method-1 reset
    ],
)
def test_parse_body_rejects(opcode, body):
    with pytest.raises(PacketError):
        parse_body(opcode, 0, b"\0" * 8, body)


def test_split_header_rejects_short():
    with pytest.raises(PacketError):
        split_header(b"\x38" + b"\0" * 7)


def test_body_roundtrip():
    pkt = ControlPacket(P_CONTROL_V1, 5, b"A" * 8, [1, 2, 0xFFFFFFFF], b"B" * 8, 77, b"payload")
    again = parse(pkt.header() + pkt.body(), pkt.body())
    assert again == pkt


# --------------------------------------------------------------------------- tls-crypt
def test_tls_crypt_server_unwraps_real_client_reset(key):
    # test_pkt.c test_tls_decrypt_lite_crypt: init_tas_crypt(true) -> VERDICT_VALID_RESET_V2
    replay_id, body = TlsCrypt(key, server=True).unwrap(CLIENT_RESET_V2_TLS_CRYPT)
    assert replay_id == 1
    (stamp,) = struct.unpack_from("!I", CLIENT_RESET_V2_TLS_CRYPT, 13)
    assert stamp == 0x61D3F8E1  # long-form packet id: unix time of the test capture
    packet = parse(CLIENT_RESET_V2_TLS_CRYPT, body)
    assert packet.opcode == P_CONTROL_HARD_RESET_CLIENT_V2 and packet.key_id == 0
    assert packet.session_id.hex() == "f419cb12d1f9e48f"
    assert packet.acks == [] and packet.packet_id == 0 and packet.payload == b""


def test_tls_crypt_client_side_cannot_unwrap_client_packet(key):
    with pytest.raises(WrapError):
        TlsCrypt(key, server=False).unwrap(CLIENT_RESET_V2_TLS_CRYPT)


def test_tls_crypt_rejects_other_formats(key):
    wrap = TlsCrypt(key, server=True)
    for packet in (CLIENT_RESET_V2_TLS_AUTH, CLIENT_RESET_V2_NONE, CLIENT_ACK_TLS_AUTH_RANDOMID):
        with pytest.raises(WrapError):
            wrap.unwrap(packet)


def test_tls_crypt_byte_set_to_0x23_anywhere_is_invalid(key):
    # test_pkt.c: "flip a byte in various places" (BPTR(&buf)[i] = 0x23)
    wrap = TlsCrypt(key, server=True)
    for i in range(len(CLIENT_RESET_V2_TLS_CRYPT)):
        bad = bytearray(CLIENT_RESET_V2_TLS_CRYPT)
        assert bad[i] != 0x23
        bad[i] = 0x23
        with pytest.raises(WrapError):
            wrap.unwrap(bytes(bad))


@pytest.mark.parametrize("vector, make", [
    (CLIENT_RESET_V2_TLS_CRYPT, lambda k: TlsCrypt(k, server=True)),
    (CLIENT_RESET_V2_TLS_AUTH, lambda k: TlsAuth(k, "sha1", server=True)),
    (CLIENT_ACK_TLS_AUTH_RANDOMID, lambda k: TlsAuth(k, "sha1", server=True)),
], ids=["tls-crypt-reset", "tls-auth-reset", "tls-auth-control"])
def test_every_bit_flip_truncation_and_extension_is_a_wrap_error(key, vector, make):
    wrap = make(key)
    wrap.unwrap(vector)  # sanity: the untouched packet verifies
    for i in range(len(vector)):
        for bit in range(8):
            bad = bytearray(vector)
            bad[i] ^= 1 << bit
            with pytest.raises(WrapError):
                wrap.unwrap(bytes(bad))
    for n in range(len(vector)):
        with pytest.raises(WrapError):
            wrap.unwrap(vector[:n])
    with pytest.raises(WrapError):
        wrap.unwrap(vector + b"\0")


def test_tls_crypt_wrong_key(key):
    with pytest.raises(WrapError):
        TlsCrypt(generate_static_key(), server=True).unwrap(CLIENT_RESET_V2_TLS_CRYPT)


def test_tls_crypt_roundtrip_both_directions(key):
    server, client = TlsCrypt(key, server=True), TlsCrypt(key, server=False)
    pkt = ControlPacket(P_CONTROL_HARD_RESET_SERVER_V2, 0, b"S" * 8, [0], b"C" * 8, 0, b"")
    wire = server.wrap(pkt.header(), pkt.body(), 1, 0x61D3F8E1)
    assert len(wire) == 9 + TlsCrypt.overhead + len(pkt.body())
    assert wire[:9] == pkt.header()  # op|kid and sid travel in clear
    assert wire[9:17] == struct.pack("!II", 1, 0x61D3F8E1)
    assert pkt.body() not in wire[17:]  # the body is encrypted
    replay_id, body = client.unwrap(wire)
    assert replay_id == 1 and body == pkt.body()
    with pytest.raises(WrapError):
        server.unwrap(wire)  # a server must not accept its own packets (reflection)

    up = ControlPacket(P_CONTROL_V1, 2, b"C" * 8, [3, 4], b"S" * 8, 9, b"\x16\x03\x03" + bytes(range(256)))
    replay_id, body = server.unwrap(client.wrap(up.header(), up.body(), 42, 1234))
    assert replay_id == 42 and parse(up.header(), body) == up
    with pytest.raises(WrapError):
        client.unwrap(client.wrap(up.header(), up.body(), 42, 1234))


def test_tls_crypt_matches_reference_construction(key):
    """Independent re-computation of the ovpn26 tls_crypt.c construction for a client packet."""
    import hmac as hmac_mod
    from hashlib import sha256

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    header, body = b"\x38" + b"\x11" * 8, b"\x00\x00\x00\x00\x00"
    wire = TlsCrypt(key, server=False).wrap(header, body, 7, 99)
    pid = struct.pack("!II", 7, 99)
    tag = hmac_mod.digest(key.hmac(1)[:32], header + pid + body, sha256)  # client sends with keys[1]
    enc = Cipher(algorithms.AES(key.cipher(1)[:32]), modes.CTR(tag[:16])).encryptor()
    assert wire == header + pid + tag + enc.update(body) + enc.finalize()


# --------------------------------------------------------------------------- tls-auth
def test_tls_auth_server_unwraps_real_client_reset(key):
    # test_pkt.c test_tls_decrypt_lite_auth: init_tas_auth(KEY_DIRECTION_NORMAL) -> VERDICT_VALID_RESET_V2
    wrap = TlsAuth(key, "sha1", server=True)
    replay_id, body = wrap.unwrap(CLIENT_RESET_V2_TLS_AUTH)
    assert replay_id == 1
    assert CLIENT_RESET_V2_TLS_AUTH[33:37] == bytes.fromhex("61d3bf6c")
    packet = parse(CLIENT_RESET_V2_TLS_AUTH, body)
    assert packet.opcode == P_CONTROL_HARD_RESET_CLIENT_V2
    assert packet.session_id.hex() == "de694c5c7bfba274"
    assert packet.acks == [] and packet.packet_id == 0
    # the unwrap does not modify its input: a second call gives the same result (test_pkt.c does this too)
    assert wrap.unwrap(CLIENT_RESET_V2_TLS_AUTH) == (replay_id, body)


def test_tls_auth_server_unwraps_real_client_control(key):
    # test_pkt.c: client_ack_tls_auth_randomid -> VERDICT_VALID_CONTROL_V1
    replay_id, body = TlsAuth(key, "sha1", server=True).unwrap(CLIENT_ACK_TLS_AUTH_RANDOMID)
    assert replay_id == 3
    packet = parse(CLIENT_ACK_TLS_AUTH_RANDOMID, body)
    assert packet.opcode == P_CONTROL_V1 and packet.session_id.hex() == "14014ebc80c6142b"
    assert packet.packet_id == 1
    assert packet.payload[:3] == b"\x16\x03\x01"  # a TLS ClientHello record
    assert len(packet.payload) == 5 + 0x010C


def test_tls_auth_wrong_direction_is_invalid(key):
    # test_pkt.c: "Wrong key direction gives a wrong hmac key and should not validate"
    with pytest.raises(WrapError):
        TlsAuth(key, "sha1", server=False).unwrap(CLIENT_RESET_V2_TLS_AUTH)


def test_tls_auth_hmac_byte_20_flipped(key):
    bad = bytearray(CLIENT_ACK_TLS_AUTH_RANDOMID)
    bad[20] = 0x23  # test_pkt.c: "flip a byte in the hmac"
    with pytest.raises(WrapError):
        TlsAuth(key, "sha1", server=True).unwrap(bytes(bad))


def test_tls_auth_rejects_short_and_other_formats(key):
    wrap = TlsAuth(key, "sha1", server=True)
    for packet in (CLIENT_RESET_V2_NONE, CLIENT_RESET_V2_TLS_CRYPT):
        with pytest.raises(WrapError):
            wrap.unwrap(packet)
    for digest in ("sha256", "sha512"):
        with pytest.raises(WrapError):
            TlsAuth(key, digest, server=True).unwrap(CLIENT_RESET_V2_TLS_AUTH)


def test_tls_auth_wrong_key(key):
    with pytest.raises(WrapError):
        TlsAuth(generate_static_key(), "sha1", server=True).unwrap(CLIENT_RESET_V2_TLS_AUTH)


def test_tls_auth_reproduces_real_client_packet(key):
    """A client-side TlsAuth re-creates the captured reset byte for byte (ovpn26 swap_hmac layout)."""
    packet = parse(CLIENT_RESET_V2_TLS_AUTH, b"\x00\x00\x00\x00\x00")
    (stamp,) = struct.unpack_from("!I", CLIENT_RESET_V2_TLS_AUTH, 33)
    wire = TlsAuth(key, "sha1", server=False).wrap(packet.header(), packet.body(), 1, stamp)
    assert wire == CLIENT_RESET_V2_TLS_AUTH


@pytest.mark.parametrize("digest, size", [("sha1", 20), ("sha256", 32), ("sha512", 64)])
def test_tls_auth_roundtrip(key, digest, size):
    server, client = TlsAuth(key, digest, server=True), TlsAuth(key, digest, server=False)
    assert server.overhead == size + 8
    pkt = ControlPacket(P_CONTROL_V1, 1, b"S" * 8, [5], b"C" * 8, 6, b"hello")
    wire = server.wrap(pkt.header(), pkt.body(), 3, 77)
    assert len(wire) == 9 + size + 8 + len(pkt.body())
    assert wire.endswith(pkt.body())  # tls-auth does not encrypt
    assert client.unwrap(wire) == (3, pkt.body())
    with pytest.raises(WrapError):
        server.unwrap(wire)
    assert server.unwrap(client.wrap(pkt.header(), pkt.body(), 4, 78)) == (4, pkt.body())
