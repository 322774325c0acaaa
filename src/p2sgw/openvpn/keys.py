"""Key-method-2 messages and data-channel key derivation (ovpn26 ssl.c).

Two derivations: TLS-EKM (RFC 5705 exporter, label "EXPORTER-OpenVPN-datakeys") when the client
announces IV_PROTO_TLS_KEY_EXPORT, else the legacy TLS 1.0 PRF over the key-method-2 randoms.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass, field

from .packets import PacketError
from .static_key import KEY2_SIZE, Key2

EKM_LABEL = b"EXPORTER-OpenVPN-datakeys"
KEY_METHOD_2 = 2
PRE_MASTER_SIZE = 48
RANDOM_SIZE = 32
MAX_STRING = 65535

# IV_PROTO bits announced by the client in peer-info (ovpn26 ssl.h)
IV_PROTO_DATA_V2 = 1 << 1
IV_PROTO_REQUEST_PUSH = 1 << 2
IV_PROTO_TLS_KEY_EXPORT = 1 << 3
IV_PROTO_AUTH_PENDING_KW = 1 << 4
IV_PROTO_DNS_OPTION = 1 << 6
IV_PROTO_CC_EXIT_NOTIFY = 1 << 7
IV_PROTO_AUTH_FAIL_TEMP = 1 << 8


def _p_hash(digest: str, secret: bytes, seed: bytes, length: int) -> bytes:
    out = b""
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, digest)
        out += hmac.digest(secret, a + seed, digest)
    return out[:length]


def tls1_prf(secret: bytes, label_and_seed: bytes, length: int) -> bytes:
    """TLS 1.0 PRF: P_MD5(S1) xor P_SHA1(S2), halves overlapping for odd lengths."""
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], label_and_seed, length)
    sha = _p_hash("sha1", secret[len(secret) - half :], label_and_seed, length)
    return bytes(a ^ b for a, b in zip(md5, sha))


@dataclass(slots=True)
class KeySource:
    """The client's key-method-2 randoms and ours (ovpn26 key_source2)."""

    client_pre_master: bytes
    client_random1: bytes
    client_random2: bytes
    server_random1: bytes = field(default_factory=lambda: os.urandom(RANDOM_SIZE))
    server_random2: bytes = field(default_factory=lambda: os.urandom(RANDOM_SIZE))

    def legacy_key2(self, client_sid: bytes, server_sid: bytes) -> Key2:
        master = tls1_prf(
            self.client_pre_master, b"OpenVPN master secret" + self.client_random1 + self.server_random1, 48
        )
        seed = b"OpenVPN key expansion" + self.client_random2 + self.server_random2 + client_sid + server_sid
        return Key2(tls1_prf(master, seed, KEY2_SIZE))


@dataclass(slots=True)
class ClientKeyMethod2:
    source: KeySource
    options: str
    username: str | None
    password: str | None = field(repr=False)
    peer_info: dict[str, str]
    length: int = 0  # bytes of the message consumed; control messages may follow in the same read

    @property
    def iv_proto(self) -> int:
        try:
            return int(self.peer_info.get("IV_PROTO", "0"))
        except ValueError:
            return 0

    @property
    def ciphers(self) -> list[str]:
        raw = self.peer_info.get("IV_CIPHERS")
        if raw:
            return [c.upper() for c in raw.split(":") if c]
        return ["AES-256-GCM", "AES-128-GCM"] if self.peer_info.get("IV_NCP") else []


def _read_string(data: bytes, pos: int) -> tuple[str | None, int]:
    if pos == len(data):
        return None, pos  # absent at end of message (older peers)
    if pos + 2 > len(data):
        raise PacketError("truncated key-method-2 string length")
    (n,) = struct.unpack_from("!H", data, pos)
    pos += 2
    if n == 0:
        return None, pos
    if pos + n > len(data):
        raise PacketError("truncated key-method-2 string")
    raw = data[pos : pos + n]
    if raw[-1:] != b"\0":
        raise PacketError("key-method-2 string not NUL terminated")
    return raw[:-1].decode("utf-8", "replace"), pos + n


def parse_client_key_method_2(data: bytes) -> ClientKeyMethod2:
    fixed = 4 + 1 + PRE_MASTER_SIZE + 2 * RANDOM_SIZE
    if len(data) < fixed:
        raise PacketError("key-method-2 message too short")
    if data[:4] != b"\0\0\0\0":
        raise PacketError("key-method-2 message does not start with 4 zero bytes")
    if data[4] & 0x0F != KEY_METHOD_2:
        raise PacketError(f"unsupported key method {data[4] & 0x0F}")
    pos = 5
    pre_master = data[pos : pos + PRE_MASTER_SIZE]
    pos += PRE_MASTER_SIZE
    r1 = data[pos : pos + RANDOM_SIZE]
    r2 = data[pos + RANDOM_SIZE : pos + 2 * RANDOM_SIZE]
    pos += 2 * RANDOM_SIZE
    options, pos = _read_string(data, pos)
    username, pos = _read_string(data, pos)
    password, pos = _read_string(data, pos)
    peer_info_text, pos = _read_string(data, pos)
    peer_info: dict[str, str] = {}
    for line in (peer_info_text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            peer_info[key.strip()] = value.strip()
    km2 = ClientKeyMethod2(KeySource(pre_master, r1, r2), options or "", username, password, peer_info)
    km2.length = pos
    return km2


def _write_string(text: str | None) -> bytes:
    if text is None:
        return b"\0\0"
    raw = text.encode() + b"\0"
    return struct.pack("!H", len(raw)) + raw


def build_server_key_method_2(source: KeySource, options: str) -> bytes:
    return b"".join(
        [
            b"\0\0\0\0",
            bytes([KEY_METHOD_2]),
            source.server_random1,
            source.server_random2,
            _write_string(options),
            _write_string(None),
            _write_string(None),
            _write_string(None),
        ]
    )
