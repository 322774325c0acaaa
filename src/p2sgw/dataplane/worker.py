"""A data-plane worker process: its UDP socket, its TUN queue, the data channels of its sessions.

Started by the control process (dataplane/supervisor.py) as `python -m p2sgw.dataplane.worker
ARGS_JSON` with the descriptors it needs passed down. It does no TLS, no authentication and reads
no clock per packet; it obeys the control process's messages (in batches, one per loop turn):

    ("peer", peer_id, addr, vip, specs, tx_key_id)  serve this session (or: its key set changed)
    ("drop", peer_id)                               stop serving it
    ("route", vip, owner) / ("unroute", vip)        who serves an address (for forwarding)
    ("ping", peer_id)                               send this session a keepalive
    ("stop",)

and tells it ("exit", peer_id) for an explicit-exit-notify and ("float", peer_id, addr) when an
authenticated packet came from a new address (NAT rebinding).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time

from ..io.openvpn_udp import BATCH, RECV_SIZE, DatagramSender
from ..io.runtime import new_event_loop, settle_gc
from ..logs import DropCounter, error, log, setup_logging
from ..openvpn.data_channel import DataChannel, DataKey
from ..openvpn.packets import P_DATA_V2
from .path import (
    Route,
    deliver,
    forward_packet,
    read_datagram_batch,
    read_tun_batch,
    write_tun,
)
from .shared import Channel, StatsTable


class DataPeer:
    """A session as a worker sees it: where to send, which address it may use, its data channel."""

    __slots__ = ("addr", "data", "encrypt", "exit_told", "owner", "peer_id", "sender", "vip")

    def __init__(self, worker: Worker, peer_id: int, addr: tuple[str, int], vip: bytes) -> None:
        self.peer_id = peer_id
        self.addr = addr
        self.vip = vip
        self.owner = None  # served here (path.Route)
        self.data = DataChannel(worker.stats.row(peer_id))
        self.encrypt = self.data.encrypt
        self.sender = worker.sender
        self.exit_told = False

    def send_many(self, packets: list[bytes]) -> None:
        self.sender.send_many(packets, self.addr)

    def set_keys(self, specs: list[tuple], tx_key_id: int | None) -> None:
        """Take the control process's key set, keeping the key objects we have (their packet-id
        counter and replay window carry on)."""
        old = {key.spec: key for key in self.data.rx_keys if key is not None}
        if self.data.tx_key is not None:
            old[self.data.tx_key.spec] = self.data.tx_key
        rx: list[DataKey | None] = [None] * 8
        for spec in specs:
            rx[spec[2]] = old.get(spec) or DataKey.from_spec(spec)
        self.data.rx_keys = rx
        self.data.tx_key = rx[tx_key_id] if tx_key_id is not None else None


class Elsewhere:
    """A routes-table entry for an address served by another process."""

    __slots__ = ("owner",)

    def __init__(self, owner: int) -> None:
        self.owner = owner


class Worker:
    def __init__(self, args: dict, loop: asyncio.AbstractEventLoop) -> None:
        self.index = args["index"]
        self.loop = loop
        self.sock = socket.socket(fileno=args["udp_fd"])
        self.tun_fd = args["tun_fd"]
        self.control = Channel(socket.socket(fileno=args["control_fd"]), send_timeout=None)
        self.forward_in = socket.socket(fileno=args["forward_fds"][self.index])
        self.forward_out = {i: socket.socket(fileno=fd) for i, fd in enumerate(args["forward_fds"]) if i != self.index}
        self.stats = StatsTable(args["stats_rows"], args["stats_fd"])
        self.drops = DropCounter()
        self.sender = DatagramSender(self.sock, self.drops)
        self.peers: dict[int, DataPeer] = {}
        self.routes: dict[bytes, Route] = {}
        self.stopped = asyncio.Event()

    def start(self) -> None:
        for sock in (self.sock, self.forward_in):
            sock.setblocking(False)
        for sock in self.forward_out.values():
            sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._udp_readable)
        self.loop.add_reader(self.tun_fd, self._tun_readable)
        self.loop.add_reader(self.forward_in.fileno(), self._forwarded)
        self.loop.add_reader(self.control.sock.fileno(), self._control_readable)
        self.loop.call_later(10.0, self._flush_drops)
        log("dataplane.worker_ready", worker=self.index, pid=os.getpid())

    # ---------------------------------------------------------------- packets
    def _udp_readable(self) -> None:
        recvfrom = self.sock.recvfrom
        peers = self.peers
        to_tun: list[bytes] = []
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if len(data) < 4 or data[0] >> 3 != P_DATA_V2:
                self.drops.drop("non-data packet at a data worker", remote=addr[0])
                continue
            peer = peers.get(int.from_bytes(data[1:4], "big"))
            if peer is None:
                self.drops.drop("data packet for unknown peer", remote=addr[0])
                continue
            plain = peer.data.decrypt(data)
            if plain is None:
                self.drops.drop(peer.data.last_drop, remote=f"{addr[0]}:{addr[1]}")
                continue
            if addr != peer.addr:  # authenticated, from a new address: the client's NAT rebound
                peer.addr = addr
                self._tell("float", peer.peer_id, addr)
            if not plain:
                if peer.data.exited and not peer.exit_told:
                    peer.exit_told = True
                    self._tell("exit", peer.peer_id)
                continue
            if plain[12:16] != peer.vip:
                self.drops.drop("source address not assigned to this client", peer_id=peer.peer_id)
                continue
            to_tun.append(plain)
        if to_tun:
            write_tun(self.tun_fd, to_tun, self.drops)

    def _tun_readable(self) -> None:
        deliver(read_tun_batch(self.tun_fd), self.routes, self._forward)

    def _forwarded(self) -> None:
        deliver(read_datagram_batch(self.forward_in), self.routes, None)

    def _forward(self, owner: int, packet: bytes) -> None:
        forward_packet(self.forward_out[owner], packet, self.drops)

    # ---------------------------------------------------------------- control
    def _tell(self, *message: object) -> None:
        try:
            self.control.send(*message)
        except (BlockingIOError, InterruptedError):
            self.drops.drop("control channel full")
        except OSError:
            pass  # the control process is gone: stop() follows

    def _control_readable(self) -> None:
        try:
            messages = self.control.receive()
        except (EOFError, OSError):
            log("dataplane.worker_orphaned", worker=self.index)
            self.stopped.set()
            return
        for message in messages:
            self._handle(message)

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "peer":
            _, peer_id, addr, vip, specs, tx_key_id = message
            peer = self.peers.get(peer_id)
            if peer is None:
                peer = self.peers[peer_id] = DataPeer(self, peer_id, addr, vip)
                self.routes[vip] = peer
            peer.set_keys(specs, tx_key_id)
        elif kind == "drop":
            peer = self.peers.pop(message[1], None)
            if peer is not None and self.routes.get(peer.vip) is peer:
                del self.routes[peer.vip]
        elif kind == "route":
            _, vip, owner = message
            if owner != self.index:
                self.routes[vip] = Elsewhere(owner)
        elif kind == "unroute":
            route = self.routes.get(message[1])
            if isinstance(route, Elsewhere):
                del self.routes[message[1]]
        elif kind == "ping":
            peer = self.peers.get(message[1])
            if peer is not None:
                ping = peer.data.keepalive()
                if ping is not None:
                    self.sender.send(ping, peer.addr)
        elif kind == "stop":
            self.stopped.set()
        else:
            error("dataplane.unknown_message", worker=self.index, kind=str(kind)[:40])

    def _flush_drops(self) -> None:
        self.drops.flush(time.time())
        self.loop.call_later(10.0, self._flush_drops)


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    setup_logging(args.get("log_level", "info"))
    loop = new_event_loop()
    # the control process decides when we stop (a signal to the whole process group, e.g. from a
    # service manager, must not take the data plane away before the sessions are told to go)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = Worker(args, loop)
    worker.start()
    settle_gc()
    loop.run_until_complete(worker.stopped.wait())
    log("dataplane.worker_stopped", worker=worker.index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
