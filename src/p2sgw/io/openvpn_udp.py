"""UDP adapter for OpenVPN: drains the socket in batches from one reader callback.

Per datagram the data path is: peer lookup by peer-id (a dict hit), AEAD decrypt, source
address check, TUN write. No asyncio object is created per packet and nothing is logged per
packet. Control packets go through the sans-I/O core and the front-end.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..logs import DropCounter, log
from ..openvpn.packets import P_CONTROL_HARD_RESET_CLIENT_V2, P_DATA_V1, P_DATA_V2

if TYPE_CHECKING:
    from ..frontends.openvpn import OpenVPNFrontend, OpenVPNPeer
    from ..gateway import Gateway

BATCH = 64
RECV_SIZE = 4096
SOL_UDP = 17
UDP_SEGMENT = 103  # not exported by Python 3.11's socket module
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000


class DatagramSender:
    """Sends a client's datagrams in as few syscalls as the kernel allows: runs of equal-size
    datagrams (the last may be shorter) go out as one UDP GSO send (UDP_SEGMENT)."""

    def __init__(self, sock: socket.socket, drops: DropCounter) -> None:
        self.sock = sock
        self.drops = drops
        self.gso = True  # UDP generic segmentation offload, until the kernel says no

    def send(self, datagram: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(datagram, addr)
        except (BlockingIOError, InterruptedError):
            self.drops.drop("udp send buffer full")
        except OSError as exc:
            self.drops.drop(f"udp send failed: {exc.strerror}")

    def send_many(self, packets: list[bytes], addr: tuple[str, int]) -> None:
        if len(packets) == 1 or not self.gso:
            for packet in packets:
                self.send(packet, addr)
            return
        start, count = 0, len(packets)
        while start < count:
            size = len(packets[start])
            end, total = start + 1, size
            while (end < count and end - start < GSO_MAX_SEGMENTS and total + size <= GSO_MAX_BYTES
                   and len(packets[end - 1]) == size and len(packets[end]) <= size):
                total += len(packets[end])
                end += 1
            if end - start == 1:
                self.send(packets[start], addr)
            else:
                self._send_gso(packets[start:end], size, addr)
            start = end

    def _send_gso(self, run: list[bytes], size: int, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendmsg([b"".join(run)], [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))], 0, addr)
        except (BlockingIOError, InterruptedError):
            self.drops.drop("udp send buffer full")
        except OSError as exc:  # no GSO here (old kernel, odd route): one datagram per send from now on
            self.gso = False
            self.drops.drop(f"udp GSO send failed ({exc.strerror}): falling back to one datagram per send")
            for packet in run:
                self.send(packet, addr)


class OpenVPNUdpEndpoint:
    """The control process's UDP socket: every control packet, and the data packets of sessions
    served here (one process, or P_DATA_V1 clients when data workers run)."""

    def __init__(self, gateway: Gateway, frontend: OpenVPNFrontend, sock: socket.socket) -> None:
        self.gw = gateway
        self.frontend = frontend
        self.sock = sock
        self.sender = DatagramSender(sock, gateway.drops)
        self.by_addr: dict[tuple[str, int], OpenVPNPeer] = {}
        gateway.loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        self.gw.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def sender_for(self, peer: OpenVPNPeer) -> tuple[Callable[[bytes], None], Callable[[list[bytes]], None]]:
        send, send_many = self.sender.send, self.sender.send_many
        return (lambda datagram: send(datagram, peer.addr)), (lambda packets: send_many(packets, peer.addr))

    def forget(self, peer: OpenVPNPeer) -> None:
        if self.by_addr.get(peer.addr) is peer:
            del self.by_addr[peer.addr]

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        by_addr = self.by_addr
        peers = self.frontend.peer_ids.table
        to_tun: list[bytes] = []
        now = 0.0
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not data:
                continue
            op = data[0] >> 3
            if op == P_DATA_V2 or op == P_DATA_V1:
                if op == P_DATA_V2 and len(data) >= 4:
                    peer = peers.get(int.from_bytes(data[1:4], "big"))
                else:
                    peer = by_addr.get(addr)
                if peer is None:
                    self.gw.drops.drop("data packet for unknown peer", remote=addr[0])
                    continue
                plain = peer.core.decrypt(data)
                if not plain:
                    if plain is None:
                        self.gw.drops.drop(peer.core.last_drop, remote=f"{addr[0]}:{addr[1]}")
                    elif peer.core.has_events:
                        self.frontend.pump(peer)  # an exit notification: act now, not at the next tick
                    continue
                if addr != peer.addr:
                    self.follow(peer, addr)
                if plain[12:16] != peer.vip_bytes:
                    self.gw.drops.drop("source address not assigned to this client", session=peer.session.id
                                       if peer.session else "")
                    continue
                to_tun.append(plain)
                continue
            if not now:
                now = time.time()
            peer = by_addr.get(addr)
            if peer is not None and not (op == P_CONTROL_HARD_RESET_CLIENT_V2 and data[1:9] != peer.core.client_sid):
                peer.core.receive_control(data, now)
                self.frontend.pump(peer)
                continue
            if not self.gw.accepting:
                continue  # shutting down: no new sessions
            verdict = self.frontend.listener.udp_packet(data, addr, now)
            if verdict.reply is not None:
                try:
                    self.sock.sendto(verdict.reply, addr)
                except OSError:
                    pass
            elif verdict.session is not None:
                old = by_addr.get(addr)
                if old is not None:
                    old.abandon("the client restarted from the same address")
                peer = self.frontend.add_peer(verdict.session, "openvpn-udp", addr, None)  # type: ignore[arg-type]
                peer.send, peer.send_many = self.sender_for(peer)
                by_addr[addr] = peer
                self.frontend.pump(peer)
            elif verdict.drop_reason:
                self.gw.drops.drop(verdict.drop_reason, remote=f"{addr[0]}:{addr[1]}")
        if to_tun:
            self.gw.tun_write(to_tun)

    def follow(self, peer: OpenVPNPeer, addr: tuple[str, int]) -> None:
        """An authenticated data packet arrived from a new address (NAT rebinding): follow it."""
        old = peer.addr
        if by_old := self.by_addr.get(old):
            if by_old is peer:
                del self.by_addr[old]
        other = self.by_addr.get(addr)
        if other is not None and other is not peer:
            other.abandon(f"address taken over by session {peer.session.id if peer.session else '?'}")
        peer.addr = addr
        self.by_addr[addr] = peer
        if peer.session is not None:
            peer.session.remote = peer.remote
        log("openvpn.float", session=peer.session.id if peer.session else None, old=f"{old[0]}:{old[1]}",
            new=peer.remote)
