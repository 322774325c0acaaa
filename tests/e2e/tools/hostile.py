"""Hostile traffic against the gateway, run inside a lab namespace: garbage, replays, reset floods.

This is an attacker, not a protocol peer: the real openvpn client is always the legitimate side.
Usage: python hostile.py garbage HOST PORT COUNT
       python hostile.py replay IFACE PORT COUNT      (captures COUNT data packets, sends each 3 more times)
       python hostile.py reset-flood HOST PORT COUNT KEYFILE
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import time


def garbage(host: str, port: int, count: int) -> None:
    rng = random.Random(1234)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        size = rng.choice([0, 1, 2, 5, 9, 14, 30, 60, 200, 1400])
        payload = bytes(rng.getrandbits(8) for _ in range(size))
        if payload and i % 3 == 0:  # plausible opcodes make it further into the parser
            payload = bytes([rng.choice([0x38, 0x20, 0x28, 0x48, 0x30, 0x18, 0x50, 0x58])]) + payload[1:]
        sock.sendto(payload, (host, port))
    print(f"sent {count} garbage datagrams")


def replay(iface: str, port: int, count: int) -> None:
    """Capture data packets the real client sends, then send exact copies again (L2 replay)."""
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL sees outgoing
    raw.bind((iface, 0))
    raw.settimeout(20)
    frames = []
    while len(frames) < count:
        frame, meta = raw.recvfrom(65535)
        if meta[2] != socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 17:
            continue
        udp = 14 + ihl
        dport = struct.unpack_from("!H", frame, udp + 2)[0]
        if dport == port and frame[udp + 8] >> 3 == 9:
            # outgoing veth frames carry a partial (offloaded) checksum: 0 means "none" for UDP/IPv4
            frames.append(frame[: udp + 6] + b"\0\0" + frame[udp + 8 :])
    for _ in range(3):
        for frame in frames:
            raw.send(frame)
    print(f"replayed {len(frames)} data packets 3 times")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def reset_flood(host: str, port: int, count: int, keyfile: str) -> None:
    """Valid-looking client resets (correct tls-crypt: the worst case) from spoofed addresses."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "src"))
    from p2sgw.openvpn.packets import P_CONTROL_HARD_RESET_CLIENT_V2, ControlPacket
    from p2sgw.openvpn.static_key import parse_static_key
    from p2sgw.openvpn.tls_wrap import TlsCrypt

    wrap = TlsCrypt(parse_static_key(open(keyfile).read()), server=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dst = socket.inet_aton(host)
    start = time.time()
    for i in range(count):
        src = socket.inet_aton(f"192.0.2.{100 + i % 150}")
        sport = 1024 + (i * 7919) % 60000
        pkt = ControlPacket(P_CONTROL_HARD_RESET_CLIENT_V2, 0, os.urandom(8), [], None, 0, b"")
        payload = wrap.wrap(pkt.header(), pkt.body(), 1, int(time.time()))
        udp_len = 8 + len(payload)
        pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
        udp = struct.pack("!HHHH", sport, port, udp_len, 0) + payload
        udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, i & 0xFFFF, 0, 64, 17, 0, src, dst)
        sock.sendto(ip + udp, (host, 0))
    print(f"sent {count} spoofed resets in {time.time() - start:.1f} s")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "garbage":
        garbage(args[0], int(args[1]), int(args[2]))
    elif cmd == "replay":
        replay(args[0], int(args[1]), int(args[2]))
    elif cmd == "reset-flood":
        reset_flood(args[0], int(args[1]), int(args[2]), args[3])
    else:
        raise SystemExit(__doc__)
