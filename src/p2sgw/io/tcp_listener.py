"""One TCP port for OpenVPN and HTTPS (and SSTP later), told apart by the first bytes.

As openvpn's own --port-share does: a connection that starts with an OpenVPN client reset
(`LL LL 38`, 14 ≤ LL ≤ 255) is OpenVPN; one that starts with a TLS handshake record (`16 03`) is
HTTPS. We peek (MSG_PEEK) without consuming, then hand the socket to the right asyncio protocol,
so neither side sees anything unusual.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable

from ..logs import DropCounter

PEEK_BYTES = 3
CLASSIFY_TIMEOUT = 10.0
P_CONTROL_HARD_RESET_CLIENT_V2_BYTE = 0x38
TLS_HANDSHAKE = 0x16


def classify(head: bytes) -> str | None:
    """'openvpn', 'tls', None (unknown) or '' (need more bytes)."""
    if not head:
        return ""
    if head[0] == TLS_HANDSHAKE:
        return "tls"
    if len(head) < 3:
        return ""
    length = int.from_bytes(head[:2], "big")
    if head[2] == P_CONTROL_HARD_RESET_CLIENT_V2_BYTE and 14 <= length <= 255:
        return "openvpn"
    return None


class SharedTcpListener:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        openvpn: Callable[[], asyncio.Protocol] | None,
        https: Callable[[], asyncio.Protocol] | None,
        https_context: Callable[[], ssl.SSLContext] | None,
        drops: DropCounter,
    ) -> None:
        self.loop = loop
        self.openvpn = openvpn
        self.https = https
        self.https_context = https_context
        self.drops = drops
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self._waiting: dict[int, tuple[socket.socket, tuple, float]] = {}
        self._tasks: set[asyncio.Task] = set()
        loop.add_reader(self.sock.fileno(), self._accept)
        self._sweeper = loop.call_later(CLASSIFY_TIMEOUT, self._sweep)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self._sweeper.cancel()
        for fd, (conn, _, _) in list(self._waiting.items()):
            self.loop.remove_reader(fd)
            conn.close()
        self._waiting.clear()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = conn.fileno()
            self._waiting[fd] = (conn, addr, time.monotonic())
            self.loop.add_reader(fd, self._classify, fd)

    def _classify(self, fd: int) -> None:
        conn, addr, _ = self._waiting[fd]
        try:
            head = conn.recv(PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        if not head:  # closed before saying anything
            self._forget(fd)
            conn.close()
            return
        kind = classify(head)
        if kind == "":
            return  # wait for the rest of the first bytes
        self._forget(fd)
        if kind == "openvpn" and self.openvpn is not None:
            self._hand_over(conn, self.openvpn, None)
        elif kind == "tls" and self.https is not None and self.https_context is not None:
            self._hand_over(conn, self.https, self.https_context())
        else:
            self.drops.drop("TCP connection with an unknown protocol", remote=f"{addr[0]}:{addr[1]}",
                            first_bytes=head.hex())
            conn.close()

    def _forget(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self._waiting.pop(fd, None)

    def _hand_over(self, conn: socket.socket, factory, context: ssl.SSLContext | None) -> None:
        async def run() -> None:
            try:
                if context is None:
                    await self.loop.connect_accepted_socket(factory, conn)
                else:
                    await self.loop.connect_accepted_socket(factory, conn, ssl=context, ssl_handshake_timeout=10)
            except (TimeoutError, OSError, ssl.SSLError) as exc:
                self.drops.drop(f"TLS handshake failed on the shared port: {type(exc).__name__}")
                conn.close()

        task = self.loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sweep(self) -> None:
        """Connections that never send enough to be classified are closed (slowloris)."""
        now = time.monotonic()
        for fd, (conn, _, since) in list(self._waiting.items()):
            if now - since > CLASSIFY_TIMEOUT:
                self._forget(fd)
                conn.close()
        self._sweeper = self.loop.call_later(CLASSIFY_TIMEOUT, self._sweep)
