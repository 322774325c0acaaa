"""TCP adapter for OpenVPN: 2-byte length framing, one session per connection.

The first bytes of a connection decide what it is (as openvpn's port-share does): an OpenVPN
client reset (`LL LL 38`) or TLS (`16 03`, kept for the HTTPS/SSTP endpoints that share 443).
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import TYPE_CHECKING

from ..openvpn.packets import P_DATA_V1, P_DATA_V2

if TYPE_CHECKING:
    from ..frontends.openvpn import OpenVPNFrontend, OpenVPNPeer
    from ..gateway import Gateway

MAX_FRAME = 16384
MAX_WRITE_BUFFER = 2 << 20  # beyond this, tunnel packets to a slow client are dropped (TCP inside TCP)
_len = struct.Struct("!H")


class OpenVPNTcpConnection(asyncio.Protocol):
    def __init__(self, gateway: Gateway, frontend: OpenVPNFrontend) -> None:
        self.gw = gateway
        self.frontend = frontend
        self.transport: asyncio.Transport | None = None
        self.peer: OpenVPNPeer | None = None
        self.addr: tuple[str, int] = ("?", 0)
        self._buf = bytearray()
        self._to_tun: list[bytes] = []  # decrypted packets of one read, written to the TUN together

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        if peername:
            self.addr = (peername[0], peername[1])

    def send(self, packet: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER and packet[0] >> 3 == P_DATA_V2:
            self.gw.drops.drop("tcp client too slow: tunnel packet dropped")
            return
        transport.write(_len.pack(len(packet)) + packet)

    def send_many(self, packets: list[bytes]) -> None:
        """Several tunnel packets in one write (one syscall instead of one per packet)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.gw.drops.drop("tcp client too slow: tunnel packets dropped")
            return
        transport.write(b"".join(_len.pack(len(p)) + p for p in packets))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            (n,) = _len.unpack_from(buf, pos)
            if n == 0 or n > MAX_FRAME:
                self._abort(f"invalid TCP frame length {n}")
                return
            if end - pos - 2 < n:
                break
            packet = bytes(buf[pos + 2 : pos + 2 + n])
            pos += 2 + n
            self._packet(packet)
            if self.transport is None:
                return
        del buf[:pos]
        if self._to_tun:
            self.gw.tun_write(self._to_tun)
            self._to_tun = []

    def _packet(self, packet: bytes) -> None:
        peer = self.peer
        if peer is None:
            verdict = self.frontend.listener.tcp_first_packet(packet, time.time())
            if verdict.session is None:
                self._abort(verdict.drop_reason or "refused")
                return
            peer = self.peer = self.frontend.add_peer(verdict.session, "openvpn-tcp", self.addr, self.send)
            peer.send_many = self.send_many
            self.gw.transports_track(peer, self)
            assert verdict.reply is not None
            self.send(verdict.reply)
            self.frontend.pump(peer)
            return
        op = packet[0] >> 3
        if op == P_DATA_V2 or op == P_DATA_V1:
            plain = peer.core.decrypt(packet)
            if not plain:
                if plain is None:
                    self.gw.drops.drop(peer.core.last_drop, remote=f"{self.addr[0]}:{self.addr[1]}")
                return
            if plain[12:16] != peer.vip_bytes:
                self.gw.drops.drop("source address not assigned to this client")
                return
            self._to_tun.append(plain)
            return
        peer.core.receive_control(packet, time.time())
        self.frontend.pump(peer)

    def _abort(self, reason: str) -> None:
        self.gw.drops.drop(reason, remote=f"{self.addr[0]}:{self.addr[1]}")
        if self.transport is not None:
            self.transport.close()
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        peer = self.peer
        if peer is not None and not peer.closed:
            peer.abandon("TCP connection closed")
