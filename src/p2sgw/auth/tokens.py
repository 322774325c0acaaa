"""Session auth-tokens (the format of ovpn26 auth_token.c), so renegotiations and reconnects do
not ask RADIUS (and the user's phone) or the browser again.

`SESS_ID_AT_` + base64(session id (12) || initial time (8) || time (8) || HMAC-SHA256(key,
username || session id || initial time || time)). Only the gateway parses it; keeping openvpn's
layout lets operators reuse its tooling.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
from dataclasses import dataclass
from hashlib import sha256

PREFIX = "SESS_ID_AT_"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    session_id: bytes
    issued_at: int  # when the user really authenticated
    renewed_at: int


class AuthTokens:
    def __init__(self, key: bytes, lifetime: int) -> None:
        self._key = key
        self.lifetime = lifetime  # seconds since the real sign-in after which a token is refused

    @classmethod
    def random(cls, lifetime: int) -> AuthTokens:
        return cls(os.urandom(32), lifetime)

    def _mac(self, username: str, body: bytes) -> bytes:
        return hmac.digest(self._key, username.encode() + body, sha256)

    def issue(self, username: str, now: float, session_id: bytes | None = None, issued_at: int | None = None) -> str:
        sid = session_id or os.urandom(12)
        body = sid + struct.pack("!QQ", issued_at if issued_at is not None else int(now), int(now))
        return PREFIX + base64.b64encode(body + self._mac(username, body)).decode()

    def verify(self, username: str, token: str, now: float) -> TokenInfo | None:
        """The token's facts if it is ours, for this user, and within its lifetime; else None."""
        if not token.startswith(PREFIX):
            return None
        try:
            raw = base64.b64decode(token[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 12 + 16 + 32:
            return None
        body, mac = raw[:28], raw[28:]
        if not hmac.compare_digest(mac, self._mac(username, body)):
            return None
        issued_at, renewed_at = struct.unpack_from("!QQ", body, 12)
        if not issued_at <= now + 60 or now - issued_at > self.lifetime:
            return None
        return TokenInfo(body[:12], issued_at, renewed_at)


def is_token(password: str | None) -> bool:
    return bool(password) and password.startswith(PREFIX)
