"""The control process's side of the data workers: start them, hand sessions to them, hear from them.

A session is handed over once its first data key is active (`hand_over`), and from then on its
key set follows every change (`keys_changed`), its keepalive pings are sent by the worker
(`ping`) and its counters are read from the shared table. Messages are queued and sent once per
loop turn, one datagram per worker, however many sessions came up or pinged in that turn. A
worker that dies takes its sessions' packet-id counters with it, so those sessions are told to
reconnect (new keys; never a reused nonce) and the worker is started again on the same socket
and queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

from ..logs import DropCounter, error, log, warn
from ..openvpn.data_channel import new_stats
from .path import forward_packet
from .shared import Channel, StatsTable
from .steering import worker_of_peer_id

if TYPE_CHECKING:
    from ..frontends.openvpn import OpenVPNPeer

STATS_ROWS = 1 << 20  # peer-ids below this can be handed over (the ids are reused, so far more than enough)
MAIN = 0  # process index of the control process; workers are 1..N


class DataWorkers:
    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, udp_socks: list[socket.socket],
                 tun_fds: list[int], drops: DropCounter, log_level: str,
                 on_exit, on_float) -> None:
        self.loop = loop
        self.count = count
        self.udp_socks = udp_socks  # all kept open here: the reuseport indexes must never move
        self.tun_fds = tun_fds
        self.drops = drops
        self.log_level = log_level
        self.on_exit = on_exit  # (peer) -> None: the client sent explicit-exit-notify
        self.on_float = on_float  # (peer, addr) -> None
        self.stats = StatsTable(STATS_ROWS)
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(count + 1)]
        for rx, tx in pairs:
            for s in (rx, tx):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                s.setblocking(False)
        self.forward_in = pairs[MAIN][0]
        self.forward_out = [tx for _, tx in pairs]
        self._forward_rx = [rx for rx, _ in pairs]
        self.channels: dict[int, Channel] = {}
        self.processes: dict[int, subprocess.Popen] = {}
        self.peers: dict[int, OpenVPNPeer] = {}  # handed over, by peer-id
        self.routes: dict[bytes, int] = {}  # every session's address -> the process serving it
        self._outbox: dict[int, list[tuple]] = {}  # per worker, sent at the end of the loop turn
        self._stopping = False

    # ---------------------------------------------------------------- processes
    def start(self) -> None:
        for index in range(1, self.count + 1):
            self._spawn(index)
        self._watch = self.loop.create_task(self._watch_processes())

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = {
            "index": index,
            "udp_fd": self.udp_socks[index].fileno(),
            "tun_fd": self.tun_fds[index],
            "control_fd": theirs.fileno(),
            "forward_fds": [s.fileno() for s in self.forward_out],
            "stats_fd": self.stats.fd,
            "stats_rows": self.stats.rows,
            "log_level": self.log_level,
        }
        args["forward_fds"][index] = self._forward_rx[index].fileno()  # its own: the receiving end
        fds = [args["udp_fd"], args["tun_fd"], args["control_fd"], args["stats_fd"], *args["forward_fds"]]
        process = subprocess.Popen([sys.executable, "-m", "p2sgw.dataplane.worker", json.dumps(args)],
                                   pass_fds=fds, stdin=subprocess.DEVNULL)
        theirs.close()
        channel = Channel(ours, send_timeout=2.0)
        self.channels[index] = channel
        self.processes[index] = process
        self.loop.add_reader(ours.fileno(), self._readable, index)
        log("dataplane.worker_started", worker=index, pid=process.pid)

    async def _watch_processes(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            for index, process in list(self.processes.items()):
                if process.poll() is not None and not self._stopping:
                    self._worker_died(index, process.returncode)

    def _worker_died(self, index: int, code: int) -> None:
        error("dataplane.worker_died", worker=index, code=code)
        channel = self.channels.pop(index)
        self.loop.remove_reader(channel.sock.fileno())
        channel.sock.close()
        orphans = [peer for peer in self.peers.values() if peer.owner == index]
        for peer in orphans:  # their packet-id counters died with the worker: new keys, so reconnect
            self.peers.pop(peer.core.peer_id, None)
            peer.owner = None
            peer.core.data_lost()
            peer.disconnect("RESTART")
        self._spawn(index)
        for vip, owner in self.routes.items():
            self._send(index, "route", vip, owner)

    async def stop(self) -> None:
        self._stopping = True
        self._watch.cancel()
        for index in list(self.channels):
            self._send(index, "stop")
        for _ in range(40):
            if all(p.poll() is not None for p in self.processes.values()):
                break
            await asyncio.sleep(0.05)
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for channel in self.channels.values():
            self.loop.remove_reader(channel.sock.fileno())
            channel.sock.close()
        self.channels.clear()
        for sock in self.udp_socks[1:]:  # the control process's own (index 0) is closed by its endpoint
            sock.close()

    # ---------------------------------------------------------------- sessions
    def can_serve(self, peer: OpenVPNPeer) -> bool:
        """UDP clients that use P_DATA_V2 (peer-ids: the steering program reads them)."""
        key = peer.core.data.tx_key
        return (peer.protocol == "openvpn-udp" and key is not None and key.spec[5]
                and peer.core.peer_id < self.stats.rows and peer.vip_bytes is not None)

    def hand_over(self, peer: OpenVPNPeer) -> None:
        index = worker_of_peer_id(peer.core.peer_id, self.count)
        core = peer.core
        core.move_data(self.stats.row(core.peer_id))
        peer.owner = index
        self.peers[core.peer_id] = peer
        self.keys_changed(peer)
        self.route(peer.vip_bytes, index)

    def keys_changed(self, peer: OpenVPNPeer) -> None:
        data = peer.core.data
        specs = [key.spec for key in data.rx_keys if key is not None]
        tx = data.tx_key.key_id if data.tx_key is not None else None
        self._send(peer.owner, "peer", peer.core.peer_id, peer.addr, peer.vip_bytes, specs, tx)

    def release(self, peer: OpenVPNPeer) -> None:
        """The session ended: its worker forgets it."""
        if self.peers.pop(peer.core.peer_id, None) is None:
            return
        self._send(peer.owner, "drop", peer.core.peer_id)
        final = new_stats()  # the row may go to the next session with this peer-id: keep a copy
        final[:] = peer.core.data.stats  # for the accounting Stop and the session.down log
        peer.core.data.stats = final
        peer.owner = None

    def route(self, vip: bytes, owner: int) -> None:
        """Tell every worker which process serves `vip`, so TUN packets that reach the wrong
        queue are forwarded there."""
        self.routes[vip] = owner
        for index in self.channels:
            if index != owner:
                self._send(index, "route", vip, owner)

    def unroute(self, vip: bytes) -> None:
        if self.routes.pop(vip, None) is not None:
            for index in self.channels:
                self._send(index, "unroute", vip)

    def ping(self, peer: OpenVPNPeer) -> None:
        self._send(peer.owner, "ping", peer.core.peer_id)

    def forward(self, owner: int, packet: bytes) -> None:
        forward_packet(self.forward_out[owner], packet, self.drops)

    def _send(self, index: int, *message: object) -> None:
        if index not in self.channels:
            return  # dead; _worker_died re-sends what a new one needs
        if not self._outbox:
            self.loop.call_soon(self._flush)
        queued = self._outbox.get(index)
        if queued is None:
            self._outbox[index] = [message]
        else:
            queued.append(message)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for index, messages in outbox.items():
            channel = self.channels.get(index)
            if channel is None:
                continue
            try:
                channel.send_batch(messages)
            except OSError as exc:
                warn("dataplane.send_failed", worker=index, messages=len(messages), error=str(exc))

    def _readable(self, index: int) -> None:
        channel = self.channels.get(index)
        if channel is None:
            return
        try:
            messages = channel.receive()
        except (EOFError, OSError):
            self.loop.remove_reader(channel.sock.fileno())
            return  # _watch_processes restarts it
        for kind, peer_id, *rest in messages:
            peer = self.peers.get(peer_id)
            if peer is None or peer.owner != index:
                continue
            if kind == "exit":
                self.on_exit(peer)
            elif kind == "float":
                self.on_float(peer, rest[0])


def default_worker_count() -> int:
    return len(os.sched_getaffinity(0))
