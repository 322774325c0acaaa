"""AEAD data channel (ovpn26 crypto.c openvpn_encrypt_aead/openvpn_decrypt_aead) and the replay window."""

from __future__ import annotations

import random
import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from p2sgw.openvpn.data_channel import (
    KEEPALIVE_PING,
    OCC_MAGIC,
    PACKET_ID_WRAP_TRIGGER,
    DataKey,
    is_keepalive,
    is_occ_exit,
)
from p2sgw.openvpn.replay import ReplayWindow
from p2sgw.openvpn.static_key import Key2, generate_static_key

CIPHERS = [("AES-256-GCM", AESGCM, 32), ("AES-128-GCM", AESGCM, 16), ("CHACHA20-POLY1305", ChaCha20Poly1305, 32)]
IP_PACKET = bytes.fromhex("4500001c00004000400100000a0800020a000001") + b"\x08\x00\xf7\xff\x00\x00\x00\x00"


@pytest.fixture
def key2() -> Key2:
    return generate_static_key()


def pair(cipher: str, key2: Key2, key_id: int = 0, peer_id: int = 5, data_v2: bool = True):
    return (DataKey(cipher, key2, key_id, peer_id, server=True, data_v2=data_v2),
            DataKey(cipher, key2, key_id, peer_id, server=False, data_v2=data_v2))


# --------------------------------------------------------------------------- roundtrip and wire format
@pytest.mark.parametrize("cipher, aead, size", CIPHERS, ids=[c[0] for c in CIPHERS])
def test_roundtrip_both_ways(key2, cipher, aead, size):
    server, client = pair(cipher, key2)
    for i in range(1, 5):
        payload = IP_PACKET + bytes([i]) * i
        assert server.decrypt(client.encrypt(payload)) == payload
        assert client.decrypt(server.encrypt(payload)) == payload
    assert server.decrypt(client.encrypt(b"")) == b""


@pytest.mark.parametrize("cipher, aead, size", CIPHERS, ids=[c[0] for c in CIPHERS])
def test_server_packet_wire_format(key2, cipher, aead, size):
    server, _ = pair(cipher, key2, key_id=3, peer_id=0x123456)
    pkt1 = server.encrypt(IP_PACKET)
    pkt2 = server.encrypt(IP_PACKET)
    # header word htonl(((P_DATA_V2 << 3 | key_id) << 24) | peer_id)
    assert pkt1[:4] == bytes([9 << 3 | 3, 0x12, 0x34, 0x56])
    assert pkt1[4:8] == struct.pack("!I", 1) and pkt2[4:8] == struct.pack("!I", 2)
    assert len(pkt1) == 4 + 4 + 16 + len(IP_PACKET)
    # decrypt by hand: the server sends with keys[1] (direction INVERSE), implicit IV = hmac slot 1 [:8]
    tag, ct = pkt1[8:24], pkt1[24:]
    nonce = pkt1[4:8] + key2.hmac(1)[:8]
    plain = aead(key2.cipher(1)[:size]).decrypt(nonce, ct + tag, pkt1[:8])
    assert plain == IP_PACKET
    # and the other way: what a client sends is sealed with keys[0]
    nonce2 = pkt2[4:8] + key2.hmac(0)[:8]
    with pytest.raises(InvalidTag):
        aead(key2.cipher(0)[:size]).decrypt(nonce2, pkt2[24:] + pkt2[8:24], pkt2[:8])


@pytest.mark.parametrize("cipher, aead, size", CIPHERS, ids=[c[0] for c in CIPHERS])
def test_server_decrypts_hand_made_client_packet(key2, cipher, aead, size):
    server, _ = pair(cipher, key2, peer_id=7)
    header = struct.pack("!I", (9 << 3 | 0) << 24 | 7) + struct.pack("!I", 1)
    sealed = aead(key2.cipher(0)[:size]).encrypt(header[4:8] + key2.hmac(0)[:8], IP_PACKET, header)
    packet = header + sealed[-16:] + sealed[:-16]
    assert server.decrypt(packet) == IP_PACKET
    assert server.decrypt(packet) is None  # replay


@pytest.mark.parametrize("cipher, aead, size", CIPHERS, ids=[c[0] for c in CIPHERS])
def test_p_data_v1(key2, cipher, aead, size):
    server, client = pair(cipher, key2, key_id=2, data_v2=False)
    pkt = server.encrypt(IP_PACKET)
    assert pkt[0] == 6 << 3 | 2  # P_DATA_V1, one-byte header, no peer-id
    assert pkt[1:5] == struct.pack("!I", 1)
    assert len(pkt) == 1 + 4 + 16 + len(IP_PACKET)
    # P_DATA_V1 AEAD: AAD = packet id only (the opcode is prepended after encryption)
    plain = aead(key2.cipher(1)[:size]).decrypt(pkt[1:5] + key2.hmac(1)[:8], pkt[21:] + pkt[5:21], pkt[1:5])
    assert plain == IP_PACKET
    assert client.decrypt(pkt) == IP_PACKET
    assert server.decrypt(client.encrypt(b"x" * 1400)) == b"x" * 1400


def test_keys_of_other_ciphers_and_keys_do_not_interoperate(key2):
    server, _ = pair("AES-256-GCM", key2)
    _, other_client = pair("AES-256-GCM", generate_static_key())
    assert server.decrypt(other_client.encrypt(IP_PACKET)) is None
    _, chacha_client = pair("CHACHA20-POLY1305", key2)
    assert server.decrypt(chacha_client.encrypt(IP_PACKET)) is None
    reflected = DataKey("AES-256-GCM", key2, 0, 5, server=True).encrypt(IP_PACKET)
    assert server.decrypt(reflected) is None  # a server's own packet reflected back


# --------------------------------------------------------------------------- replay / tamper
def test_replay_and_window(key2):
    server, client = pair("AES-256-GCM", key2)
    packets = [client.encrypt(bytes([i % 256])) for i in range(1, 101)]  # packet ids 1..100
    assert server.decrypt(packets[0]) == b"\x01"
    assert server.decrypt(packets[0]) is None  # replayed
    assert server.decrypt(packets[99]) == bytes([100])  # id 100 moves the window
    assert server.decrypt(packets[1]) is None  # id 2: 98 behind, outside the 64 window
    assert server.decrypt(packets[35]) is None  # id 36: exactly 64 behind -> out
    assert server.decrypt(packets[36]) == bytes([37])  # id 37: 63 behind -> still in the window
    assert server.decrypt(packets[36]) is None
    assert server.decrypt(packets[98]) == bytes([99])  # out of order inside the window is fine
    assert server.decrypt(packets[99]) is None


def test_shuffled_within_window_all_accepted_once(key2):
    server, client = pair("AES-128-GCM", key2)
    packets = [(i, client.encrypt(i.to_bytes(2, "big"))) for i in range(1, 61)]
    random.Random(1).shuffle(packets)
    for i, pkt in packets:
        assert server.decrypt(pkt) == i.to_bytes(2, "big")
    for _, pkt in packets:
        assert server.decrypt(pkt) is None


def test_tampered_packets_dropped_without_moving_the_window(key2):
    server, client = pair("AES-256-GCM", key2)
    pkt = client.encrypt(IP_PACKET)
    for i in range(len(pkt)):
        bad = bytearray(pkt)
        bad[i] ^= 0x01
        assert server.decrypt(bytes(bad)) is None, i
    assert server.decrypt(pkt[:-1]) is None
    assert server.decrypt(pkt + b"\0") is None
    assert server.decrypt(pkt[:23]) is None  # shorter than header + id + tag
    # a forged packet with a huge packet id must not advance the window
    forged = bytearray(client.encrypt(IP_PACKET))
    forged[4:8] = struct.pack("!I", 0x7FFFFFFF)
    assert server.decrypt(bytes(forged)) is None
    assert server.replay.highest == 0
    assert server.decrypt(pkt) == IP_PACKET


def test_packet_id_zero_rejected(key2):
    server, _ = pair("AES-256-GCM", key2)
    header = struct.pack("!I", (9 << 3) << 24 | 5) + b"\0\0\0\0"
    sealed = AESGCM(key2.cipher(0)[:32]).encrypt(header[4:8] + key2.hmac(0)[:8], IP_PACKET, header)
    assert server.decrypt(header + sealed[-16:] + sealed[:-16]) is None


def test_decrypt_empty_and_tiny_packets_return_none(key2):
    # regression: DataKey.decrypt(b"") used to raise IndexError (packet[0] before any length check)
    server, _ = pair("AES-256-GCM", key2)
    for n in range(25):
        assert server.decrypt(bytes([9 << 3]) + b"\0" * n if n else b"") is None


def test_needs_renegotiation_near_wrap(key2):
    server, _ = pair("AES-256-GCM", key2)
    assert not server.needs_renegotiation
    server.tx_packet_id = PACKET_ID_WRAP_TRIGGER - 1
    server.encrypt(b"x")
    assert server.needs_renegotiation


def test_keepalive_and_occ_exit_helpers():
    assert is_keepalive(KEEPALIVE_PING) and len(KEEPALIVE_PING) == 16
    assert not is_keepalive(KEEPALIVE_PING[:-1] + b"\0")
    assert is_occ_exit(OCC_MAGIC + b"\x06")
    assert not is_occ_exit(OCC_MAGIC + b"\x05") and not is_occ_exit(OCC_MAGIC)


# --------------------------------------------------------------------------- ReplayWindow
def test_replay_window_zero_rejected():
    w = ReplayWindow(64)
    assert not w.check(0)
    w.update(5)
    assert not w.check(0)


def test_replay_window_check_does_not_mutate():
    w = ReplayWindow(64)
    for _ in range(3):
        assert w.check(10)
    assert w.highest == 0 and w.bitmap == 0
    w.update(10)
    state = (w.highest, w.bitmap)
    w.check(11), w.check(9), w.check(10), w.check(1000)
    assert (w.highest, w.bitmap) == state


def test_replay_window_update_and_slide():
    w = ReplayWindow(64)
    w.update(1)
    assert not w.check(1) and w.check(2)
    w.update(3)
    assert w.check(2) and not w.check(3) and not w.check(1)
    w.update(2)
    assert not w.check(2)
    w.update(66)  # highest 66: ids 3..66 inside the window, 2 and below outside
    assert not w.check(2) and w.check(4) and not w.check(3)
    assert w.check(5) and not w.check(66) and w.check(67)
    w.update(200)  # slide by more than the window: everything older is forgotten (and refused)
    assert not w.check(136) and w.check(137) and not w.check(66) and not w.check(200)
    assert w.bitmap == 1


def test_replay_window_matches_model():
    rng = random.Random(7)
    w = ReplayWindow(64)
    seen: set[int] = set()
    highest = 0
    for _ in range(3000):
        pid = max(0, highest + rng.randint(-80, 20))
        expected = pid != 0 and pid not in seen and (pid > highest or highest - pid < 64)
        assert w.check(pid) == expected, (pid, highest)
        if expected:
            w.update(pid)
            seen.add(pid)
            highest = max(highest, pid)


def test_replay_window_other_sizes():
    w = ReplayWindow(8)
    w.update(10)
    assert w.check(3) and not w.check(2)
