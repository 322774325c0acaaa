"""Generic receive offload in user space: coalesce decrypted TCP segments before the TUN write.

Half of the gateway's time on the client→VNet path was the kernel forwarding each packet inside
the TUN write. With IFF_VNET_HDR the TUN accepts one large TCP packet plus a virtio_net_hdr
saying "segment me" (GSO), so a train of segments of one flow costs one write and one trip
through the forwarding path; the kernel (or the receiving veth) segments it again. The merge
rules are Linux's tcp_gro_receive: same flow, contiguous sequence numbers, same ACK and TCP
options, equal segment sizes (the last may be shorter), no SYN/FIN/RST/URG, and PSH only on the
last segment. Anything else is written as it came.
"""

from __future__ import annotations

import os
import struct

VNET_HDR_LEN = 10
PLAIN_HDR = bytes(VNET_HDR_LEN)  # flags 0, gso_type NONE: the packet is complete as it is
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
MAX_GSO_BYTES = 65000
TCP_ACK, TCP_PSH = 0x10, 0x08
_vnet_hdr = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_u16 = struct.Struct("!H")


def _checksum_fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum of any length (odd lengths padded with a zero byte)."""
    if len(data) % 2:
        data += b"\0"
    return ~_checksum_fold(sum(struct.unpack(f"!{len(data) // 2}H", data))) & 0xFFFF


def _ip_header_checksum(header: bytes | bytearray) -> int:
    return ~_checksum_fold(sum(struct.unpack("!10H", header))) & 0xFFFF


def _tcp_segment(packet: bytes) -> tuple[int, int, int] | None:
    """(header length, payload length, flags) of a plain IPv4 TCP segment that may be merged."""
    if len(packet) < 40 or packet[0] != 0x45 or packet[9] != 6:
        return None  # not IPv4 without options, or not TCP
    if packet[6] & 0x3F or packet[7]:  # MF or a fragment offset
        return None
    total = _u16.unpack_from(packet, 2)[0]
    hdr_len = 20 + (packet[32] >> 4) * 4
    flags = packet[33]
    if total != len(packet) or hdr_len > total or flags & ~(TCP_ACK | TCP_PSH) or not flags & TCP_ACK:
        return None
    return hdr_len, total - hdr_len, flags


def write_coalesced(fd: int, packets: list[bytes]) -> None:
    """Write decrypted IP packets to a TUN opened with IFF_VNET_HDR, merging TCP trains."""
    writev = os.writev
    i, count = 0, len(packets)
    while i < count:
        first = packets[i]
        seg = _tcp_segment(first)
        if seg is None or seg[1] == 0 or seg[2] & TCP_PSH:
            writev(fd, (PLAIN_HDR, first))
            i += 1
            continue
        hdr_len, mss, _ = seg
        flow = first[12:24]  # addresses and ports
        ack = first[28:32]
        options = first[40:hdr_len]
        next_seq = (int.from_bytes(first[24:28], "big") + mss) & 0xFFFFFFFF
        parts = [memoryview(first)[hdr_len:]]
        size, flags_or, j = mss, 0, i + 1
        while j < count and size + mss <= MAX_GSO_BYTES:
            packet = packets[j]
            other = _tcp_segment(packet)
            if (other is None or other[0] != hdr_len or other[1] == 0 or other[1] > mss
                    or packet[12:24] != flow or packet[28:32] != ack or packet[40:hdr_len] != options
                    or int.from_bytes(packet[24:28], "big") != next_seq):
                break
            parts.append(memoryview(packet)[hdr_len:])
            size += other[1]
            flags_or |= other[2]
            next_seq = (next_seq + other[1]) & 0xFFFFFFFF
            j += 1
            if other[1] < mss or other[2] & TCP_PSH:
                break  # a short or pushed segment ends the train
        if len(parts) == 1:
            writev(fd, (PLAIN_HDR, first))
            i += 1
            continue
        header = bytearray(first[:hdr_len])
        total = hdr_len + size
        _u16.pack_into(header, 2, total)
        _u16.pack_into(header, 10, 0)
        _u16.pack_into(header, 10, _ip_header_checksum(header[:20]))
        header[33] |= flags_or & TCP_PSH
        # NEEDS_CSUM: the TCP checksum field holds the pseudo-header sum; the kernel finishes it per segment
        pseudo = sum(struct.unpack("!4H", first[12:20])) + 6 + (total - 20)
        _u16.pack_into(header, 36, _checksum_fold(pseudo))
        vnet = _vnet_hdr.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hdr_len, mss, 20, 16)
        writev(fd, [vnet, header, *parts])
        i = j
