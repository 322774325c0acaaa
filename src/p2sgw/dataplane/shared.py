"""What the control process and the data workers share: the counter table and the message channel."""

from __future__ import annotations

import mmap
import os
import pickle
import select
import socket

ROW_BYTES = 32  # DataChannel.stats: packets in, bytes in, packets out, bytes out (u64 each)
MAX_DATAGRAM = 1 << 20  # room for BATCH_MESSAGES "peer" messages with all 8 keys each
BATCH_MESSAGES = 256


class StatsTable:
    """Per-session traffic counters in shared memory (a memfd), one row per peer-id.

    Workers add to their sessions' rows on every packet; the control process reads them for
    keepalive (ping-restart), accounting and `p2sgw sessions`, without any message per packet.
    The mapping is sparse: rows cost memory only once a session with that peer-id has existed."""

    def __init__(self, rows: int, fd: int | None = None) -> None:
        self.rows = rows
        if fd is None:
            fd = os.memfd_create("p2sgw-stats", 0)  # no MFD_CLOEXEC: inherited by the workers
            os.ftruncate(fd, rows * ROW_BYTES)
        self.fd = fd
        self._map = mmap.mmap(fd, rows * ROW_BYTES)
        self._words = memoryview(self._map).cast("Q")

    def row(self, index: int) -> memoryview:
        if not 0 <= index < self.rows:
            raise IndexError(index)
        return self._words[index * 4 : index * 4 + 4]


class Channel:
    """Messages between the control process and one worker: lists of tuples over a SOCK_SEQPACKET
    pair, so that what one loop turn produces (hand-overs, routes, pings) costs one send.

    Both ends are our own processes (a socketpair made by the control process), so pickle is
    safe here; nothing from the network is ever unpickled."""

    def __init__(self, sock: socket.socket, send_timeout: float | None) -> None:
        """send_timeout None: a full buffer drops the message (BlockingIOError); else wait up to that
        long for room (the worker drains its end quickly; this only rides out a burst)."""
        self.sock = sock
        self.send_timeout = send_timeout
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setblocking(False)
        self._buffer = bytearray(MAX_DATAGRAM)

    def send(self, *message: object) -> None:
        self.send_batch([message])

    def send_batch(self, messages: list[tuple]) -> None:
        for start in range(0, len(messages), BATCH_MESSAGES):
            data = pickle.dumps(messages[start : start + BATCH_MESSAGES], protocol=pickle.HIGHEST_PROTOCOL)
            try:
                self.sock.send(data)
            except BlockingIOError:
                if self.send_timeout is None or not select.select([], [self.sock], [], self.send_timeout)[1]:
                    raise
                self.sock.send(data)

    def receive(self) -> list[tuple]:
        out: list[tuple] = []
        view = memoryview(self._buffer)
        while True:
            try:
                size = self.sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return out
            if not size:
                raise EOFError("the other process closed its end")
            out += pickle.loads(view[:size])
