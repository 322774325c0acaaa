"""OpenVPN static key files (tls-crypt / tls-auth): 2048 bits as hex between PEM-like markers.

The 256 bytes form `key2` = keys[0].cipher(64) | keys[0].hmac(64) | keys[1].cipher(64) | keys[1].hmac(64).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BEGIN = "-----BEGIN OpenVPN Static key V1-----"
END = "-----END OpenVPN Static key V1-----"
KEY2_SIZE = 256


class StaticKeyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Key2:
    """Two directional key slots, each a 64-byte cipher key and a 64-byte HMAC key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY2_SIZE:
            raise StaticKeyError(f"static key must be {KEY2_SIZE} bytes, got {len(self.raw)}")

    def cipher(self, slot: int) -> bytes:
        return self.raw[slot * 128 : slot * 128 + 64]

    def hmac(self, slot: int) -> bytes:
        return self.raw[slot * 128 + 64 : slot * 128 + 128]


def generate_static_key() -> Key2:
    return Key2(os.urandom(KEY2_SIZE))


def format_static_key(key: Key2) -> str:
    hexed = key.raw.hex()
    lines = [hexed[i : i + 32] for i in range(0, len(hexed), 32)]
    return "\n".join(["#", "# 2048 bit OpenVPN static key", "#", BEGIN, *lines, END, ""])


def parse_static_key(text: str) -> Key2:
    try:
        body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    except IndexError:
        raise StaticKeyError("not an OpenVPN static key (markers missing)") from None
    hexed = "".join(line.strip() for line in body.splitlines() if not line.strip().startswith("#"))
    try:
        raw = bytes.fromhex(hexed)
    except ValueError:
        raise StaticKeyError("static key contains non-hex characters") from None
    return Key2(raw)
