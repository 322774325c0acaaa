"""UDP adapter for OpenVPN: drains the socket in batches from one reader callback.

Per datagram the data path is: peer lookup by peer-id (a dict hit), AEAD decrypt, source
address check, TUN write. No asyncio object is created per packet and nothing is logged per
packet. Control packets go through the sans-I/O core and the front-end.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

from ..logs import log
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


class OpenVPNUdpEndpoint:
    def __init__(self, gateway: Gateway, frontend: OpenVPNFrontend, host: str, port: int) -> None:
        self.gw = gateway
        self.frontend = frontend
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # one socket per worker, later
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.by_addr: dict[tuple[str, int], OpenVPNPeer] = {}
        self.gso = True  # UDP generic segmentation offload, until the kernel says no
        gateway.loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        self.gw.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def sender(self, addr_holder: OpenVPNPeer):
        sendto = self.sock.sendto

        def send(datagram: bytes) -> None:
            try:
                sendto(datagram, addr_holder.addr)
            except (BlockingIOError, InterruptedError):
                self.gw.drops.drop("udp send buffer full")
            except OSError as exc:
                self.gw.drops.drop(f"udp send failed: {exc.strerror}")

        return send

    def batch_sender(self, peer: OpenVPNPeer):
        """Send a client's packets in as few syscalls as the kernel allows: runs of equal-size
        datagrams (the last may be shorter) go out as one UDP GSO send (UDP_SEGMENT)."""
        sock = self.sock

        def send_many(packets: list[bytes]) -> None:
            if len(packets) == 1 or not self.gso:
                for packet in packets:
                    peer.send(packet)
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
                    peer.send(packets[start])
                else:
                    self._send_gso(sock, packets[start:end], size, peer)
                start = end

        return send_many

    def _send_gso(self, sock: socket.socket, run: list[bytes], size: int, peer: OpenVPNPeer) -> None:
        try:
            sock.sendmsg([b"".join(run)], [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))], 0, peer.addr)
        except (BlockingIOError, InterruptedError):
            self.gw.drops.drop("udp send buffer full")
        except OSError as exc:  # no GSO here (old kernel, odd route): one datagram per send from now on
            self.gso = False
            self.gw.drops.drop(f"udp GSO send failed ({exc.strerror}): falling back to one datagram per send")
            for packet in run:
                peer.send(packet)

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
                    self._float(peer, addr)
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
                peer.send = self.sender(peer)
                peer.send_many = self.batch_sender(peer)
                by_addr[addr] = peer
                self.frontend.pump(peer)
            elif verdict.drop_reason:
                self.gw.drops.drop(verdict.drop_reason, remote=f"{addr[0]}:{addr[1]}")
        if to_tun:
            self.gw.tun_write(to_tun)

    def _float(self, peer: OpenVPNPeer, addr: tuple[str, int]) -> None:
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
