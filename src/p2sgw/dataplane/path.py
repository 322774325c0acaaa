"""The VNet → client half of the packet path, shared by the control process and the workers."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from ..io.gro import VNET_HDR_LEN, write_coalesced
from ..logs import DropCounter

TUN_BATCH = 64
TUN_READ_SIZE = 65546  # a 64 KiB packet behind the virtio_net_hdr


class Route(Protocol):
    """A routes-table entry: a session served here (owner None) or one owned by another process."""

    owner: int | None

    def encrypt(self, ip_packet: memoryview) -> bytes | None: ...

    def send_many(self, packets: list[bytes]) -> None: ...


def write_tun(fd: int, packets: list[bytes], drops: DropCounter) -> None:
    """Decrypted packets from clients, in arrival order: TCP trains go in as GSO writes (io/gro.py)."""
    try:
        write_coalesced(fd, packets)
    except (BlockingIOError, InterruptedError):
        drops.drop("tun queue full")
    except OSError as exc:
        drops.drop(f"tun write failed: {exc.strerror}")


def read_tun_batch(fd: int) -> list[bytes]:
    read = os.read
    packets = []
    for _ in range(TUN_BATCH):
        try:
            packets.append(read(fd, TUN_READ_SIZE))
        except (BlockingIOError, InterruptedError):
            break
    return packets


def forward_packet(sock, packet: bytes, drops: DropCounter) -> None:
    """Hand a TUN packet to the process that serves its session (an AF_UNIX datagram socket)."""
    try:
        sock.send(packet)
    except (BlockingIOError, InterruptedError):
        drops.drop("forward queue full")
    except OSError:
        drops.drop("forward failed")


def read_datagram_batch(sock) -> list[bytes]:
    """Packets forwarded by another process (an AF_UNIX datagram socket)."""
    recv = sock.recv
    packets = []
    for _ in range(TUN_BATCH):
        try:
            packets.append(recv(TUN_READ_SIZE))
        except (BlockingIOError, InterruptedError):
            break
    return packets


def deliver(packets: list[bytes], routes: dict[bytes, Route], forward: Callable[[int, bytes], None] | None) -> None:
    """Encrypt TUN packets (virtio_net_hdr first) for their clients, one send batch per client (UDP GSO
    or one TCP write). Packets of a session owned by another process go to `forward`, or are
    dropped when they were forwarded here already (`forward` None: never bounce a packet twice)."""
    batches: dict[Route, list[bytes]] = {}
    for packet in packets:
        peer = routes.get(packet[26:30])  # IPv4 destination, after the 10-byte virtio_net_hdr
        if peer is None:
            continue  # not for a client (e.g. the kernel probing the pool): nothing to do
        if peer.owner is not None:
            if forward is not None:
                forward(peer.owner, packet)
            continue
        encrypted = peer.encrypt(memoryview(packet)[VNET_HDR_LEN:])
        if encrypted is not None:
            batch = batches.get(peer)
            if batch is None:
                batches[peer] = [encrypted]
            else:
                batch.append(encrypted)
    for peer, batch in batches.items():
        peer.send_many(batch)
