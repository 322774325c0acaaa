"""Stateless answer to the first client packet (openvpn 2.6 HMAC session-id cookie, ssl_pkt.c).

The server's session id is a MAC over the client's address, its session id and a time slot,
so a flood of spoofed resets costs one HMAC each and no memory: state is created only when the
client's next packet echoes a valid id from the address it claims.
"""

from __future__ import annotations

import hmac
import os
import struct
from hashlib import sha256


class SessionCookie:
    def __init__(self, hand_window: int, key: bytes | None = None) -> None:
        self._key = key or os.urandom(32)
        self._slot = max(1, (hand_window + 1) // 2)

    def _mac(self, slot: int, addr: tuple[str, int], client_sid: bytes) -> bytes:
        msg = struct.pack("!Q", slot) + f"{addr[0]}:{addr[1]}".encode() + client_sid
        return hmac.digest(self._key, msg, sha256)[:8]

    def make(self, addr: tuple[str, int], client_sid: bytes, now: float) -> bytes:
        return self._mac(int(now) // self._slot, addr, client_sid)

    def verify(self, cookie: bytes, addr: tuple[str, int], client_sid: bytes, now: float) -> bool:
        current = int(now) // self._slot
        return any(
            hmac.compare_digest(cookie, self._mac(current - offset, addr, client_sid)) for offset in range(3)
        )
