"""MS-CHAPv2 (RFC 2759 §9.2) and MPPE start keys (RFC 3079 §3.5) vectors, RFC 2548 attributes."""

from __future__ import annotations

import pytest

from p2sgw.radius import mschap
from p2sgw.radius.packet import PacketError

USER, PASSWORD = "User", "clientPass"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
CHALLENGE_HASH = bytes.fromhex("D02E4386BCE91226")
PASSWORD_HASH = bytes.fromhex("44EBBA8D5312B8D611474411F56989AE")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
PASSWORD_HASH_HASH = bytes.fromhex("41C00C584BD2D91C4017A2A12FA59F3F")
AUTH_RESPONSE = "S=407A5589115FD0D6209F510FE9C04566932CDA56"
# RFC 3079 §3.5 (128-bit keys from the same credentials)
MASTER_KEY = bytes.fromhex("FDECE3717A8C838CB388E527AE3CDD31")
SEND_START_KEY_128 = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")


def test_rfc2759_vectors():
    assert mschap.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER) == CHALLENGE_HASH
    assert mschap.nt_password_hash(PASSWORD) == PASSWORD_HASH
    assert mschap.hash_nt_password_hash(PASSWORD_HASH) == PASSWORD_HASH_HASH
    assert mschap.challenge_response(CHALLENGE_HASH, PASSWORD_HASH) == NT_RESPONSE
    assert mschap.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD) == NT_RESPONSE
    assert mschap.generate_authenticator_response(
        PASSWORD, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER) == AUTH_RESPONSE
    assert mschap.check_authenticator_response(
        PASSWORD, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER, AUTH_RESPONSE.lower())
    assert not mschap.check_authenticator_response(
        "wrong", NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER, AUTH_RESPONSE)


def test_domain_prefix_is_not_hashed():
    assert mschap.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, "EXAMPLE\\User") == CHALLENGE_HASH


def test_rfc3079_master_and_start_keys():
    assert mschap.master_key(PASSWORD_HASH_HASH, NT_RESPONSE) == MASTER_KEY
    send, recv = mschap.server_master_keys(PASSWORD_HASH, NT_RESPONSE)
    # RFC 3079 §3.5 calls it "SendStartKey128", but it is computed with Magic3, i.e. it is the
    # *server's* send key (the client's receive key): protocols.md §4.5.
    assert send == SEND_START_KEY_128
    assert mschap.asymmetric_start_key(MASTER_KEY, 16, is_send=False, is_server=False) == send
    assert mschap.asymmetric_start_key(MASTER_KEY, 16, is_send=True, is_server=False) == recv
    assert recv != send and len(recv) == 16
    assert mschap.asymmetric_start_key(MASTER_KEY, 8, True, True) == send[:8]


def test_des_key_parity():
    key = mschap._des_key(bytes(7))
    assert key == bytes([1] * 8)  # odd parity
    assert all(b.bit_count() % 2 == 1 for b in mschap._des_key(b"\xff\x00\x12\x34\x56\x78\x9a"))


def test_ms_chap2_response_attribute():
    value = mschap.ms_chap2_response_attribute(0x2A, PEER_CHALLENGE, NT_RESPONSE)
    assert len(value) == 50
    assert value[0] == 0x2A and value[1] == 0
    assert value[2:18] == PEER_CHALLENGE and value[18:26] == bytes(8) and value[26:] == NT_RESPONSE
    with pytest.raises(ValueError):
        mschap.ms_chap2_response_attribute(1, PEER_CHALLENGE[:15], NT_RESPONSE)


def test_ms_chap2_success_checks():
    value = b"\x2a" + AUTH_RESPONSE.encode() + b" M=Welcome"
    assert mschap.parse_ms_chap2_success(value) == (0x2A, AUTH_RESPONSE, "Welcome")
    full = dict(nt_response=NT_RESPONSE, peer_challenge=PEER_CHALLENGE,
                authenticator_challenge=AUTH_CHALLENGE, username=USER)
    assert mschap.check_ms_chap2_success(value, 0x2A, PASSWORD_HASH, **full)
    assert mschap.check_ms_chap2_success(value, 0x2A, expected=AUTH_RESPONSE)
    assert mschap.check_ms_chap2_success(value, 0x2A)  # relay: format + ident only
    assert not mschap.check_ms_chap2_success(value, 0x2B)
    assert not mschap.check_ms_chap2_success(value, 0x2A, mschap.nt_password_hash("x"), **full)
    bad = b"\x2a" + b"S=" + b"0" * 40
    assert not mschap.check_ms_chap2_success(bad, 0x2A, PASSWORD_HASH, **full)
    assert not mschap.check_ms_chap2_success(None, 0x2A)
    assert not mschap.check_ms_chap2_success(b"\x2aS=short", 0x2A)
    with pytest.raises(PacketError):
        mschap.parse_ms_chap2_success(b"\x01" + b"X" * 42)


def test_ms_chap_error():
    ident, fields = mschap.parse_ms_chap_error(
        b"\x07E=691 R=0 C=00112233445566778899AABBCCDDEEFF V=3 M=Authentication failed")
    assert ident == 7
    assert fields == {"E": "691", "R": "0", "C": "00112233445566778899AABBCCDDEEFF", "V": "3",
                      "M": "Authentication failed"}
    assert mschap.parse_ms_chap_error(b"\x01E=648 R=0 V=3")[1] == {"E": "648", "R": "0", "V": "3"}
    with pytest.raises(PacketError):
        mschap.parse_ms_chap_error(b"\x01")
