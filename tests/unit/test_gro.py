"""User-space GRO before the TUN write: which segments merge, and what the kernel is handed."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2sgw.io.gro import PLAIN_HDR, VNET_HDR_LEN, _ip_header_checksum, write_coalesced

SRC, DST = bytes([172, 16, 201, 2]), bytes([10, 1, 0, 10])


def tcp(seq: int, payload: bytes, flags: int = 0x10, ack: int = 7, sport: int = 40000,
        options: bytes = b"\x01\x01\x08\x0a" + bytes(8)) -> bytes:
    tcp_header = struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, (20 + len(options)) // 4 << 4, flags, 502, 0, 0)
    total = 20 + len(tcp_header) + len(options) + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, SRC, DST))
    struct.pack_into("!H", ip, 10, _ip_header_checksum(ip))
    return bytes(ip) + tcp_header + options + payload


@pytest.fixture
def tun():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def written(tun) -> list[bytes]:
    a, b = tun
    b.setblocking(False)
    out = []
    while True:
        try:
            out.append(b.recv(70000))
        except BlockingIOError:
            return out


def test_train_of_one_flow_becomes_one_gso_write(tun):
    mss = 1388
    packets = [tcp(1000 + i * mss, bytes([i]) * mss) for i in range(5)] + [tcp(1000 + 5 * mss, b"x" * 100, 0x18)]
    write_coalesced(tun[0].fileno(), packets)
    [merged] = written(tun)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from("<BBHHHH", merged)
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 1, 52, mss, 20, 16)
    ip = merged[VNET_HDR_LEN:]
    assert struct.unpack_from("!H", ip, 2)[0] == len(ip) == 52 + 5 * mss + 100
    assert _ip_header_checksum(ip[:20]) == 0  # a valid header sums to zero
    assert ip[33] & 0x08  # the last segment's PSH survives
    assert ip[52:] == b"".join(p[52:] for p in packets)


def test_what_must_not_merge_is_written_alone(tun):
    mss = 1000
    packets = [
        tcp(1, b"a" * mss),
        tcp(1 + mss, b"b" * mss, sport=40001),  # another flow
        tcp(5000, b"c" * mss),  # not contiguous with the first
        tcp(5000 + mss, b"d" * mss, ack=8),  # another ACK
        tcp(9000, b"", 0x10),  # a pure ACK
        tcp(9000, b"e" * 10, 0x11),  # FIN
    ]
    write_coalesced(tun[0].fileno(), packets)
    out = written(tun)
    assert out == [PLAIN_HDR + p for p in packets]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_arbitrary_packets_pass_through_unchanged(blobs):
    """Garbage inside a tunnel is the client's business: written as it came, never a crash."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        write_coalesced(pair[0].fileno(), blobs)
        assert written(pair) == [PLAIN_HDR + b for b in blobs]
    finally:
        for s in pair:
            s.close()
