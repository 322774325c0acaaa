"""Shared bits for the RADIUS unit tests: a tiny server-side answerer and packet surgery."""

from __future__ import annotations

import hashlib
import hmac

from p2sgw.radius.packet import (
    ACCESS_ACCEPT,
    HEADER_LEN,
    RadiusPacket,
    encode_reply,
)

SECRET = b"xyzzy5461"
RFC_REQUEST_AUTHENTICATOR = bytes.fromhex("0f403f9473978057bd83d5cb98f4227a")


def answer(datagram: bytes, secret: bytes, code: int = ACCESS_ACCEPT, attributes=(),
           message_authenticator: bool = True) -> bytes:
    """What a RADIUS server would send back to `datagram`."""
    req = RadiusPacket.decode(datagram, secret=secret)
    return encode_reply(code, req.identifier, req.authenticator, secret, attributes,
                        message_authenticator=message_authenticator)


def resign(reply: bytes, request_authenticator: bytes, secret: bytes) -> bytes:
    """Recompute only the Response Authenticator (after tampering with the attributes)."""
    auth = hashlib.md5(reply[:4] + request_authenticator + reply[HEADER_LEN:] + secret).digest()
    return reply[:4] + auth + reply[HEADER_LEN:]


def message_authenticator_offset(packet: bytes) -> int | None:
    i = HEADER_LEN
    while i + 2 <= len(packet):
        if packet[i] == 80:
            return i + 2
        i += packet[i + 1]
    return None


def independent_ma(packet: bytes, secret: bytes, vector: bytes) -> bytes:
    """HMAC-MD5 Message-Authenticator computed by hand (RFC 2869 §5.14), for cross-checks."""
    off = message_authenticator_offset(packet)
    assert off is not None
    zeroed = packet[:off] + bytes(16) + packet[off + 16:]
    return hmac.new(secret, zeroed[:4] + vector + zeroed[HEADER_LEN:], "md5").digest()
