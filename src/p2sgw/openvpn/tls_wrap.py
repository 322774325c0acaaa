"""Control-channel wrapping: tls-crypt (AES-256-CTR + HMAC-SHA256) and tls-auth (HMAC only).

Both authenticate every control packet with a pre-shared key before any TLS state exists, so
packets from strangers are dropped for the cost of one HMAC (ovpn26 tls_crypt.c, ssl_pkt.c).
The server uses direction NORMAL for tls-crypt (send keys[0], verify keys[1]) and direction 0 for
tls-auth profiles that carry `key-direction 1`.
"""

from __future__ import annotations

import hmac
import struct
from hashlib import sha256

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .packets import HEADER_SIZE, PacketError
from .static_key import Key2

TLS_CRYPT_TAG_SIZE = 32
REPLAY_ID_SIZE = 8  # packet id (4) + unix time (4), "long form"


class WrapError(PacketError):
    """Packet failed authentication: drop silently (no reply, DoS resistance)."""


class TlsCrypt:
    overhead = REPLAY_ID_SIZE + TLS_CRYPT_TAG_SIZE

    def __init__(self, key: Key2, server: bool = True) -> None:
        tx, rx = (0, 1) if server else (1, 0)
        self._tx_enc = algorithms.AES(key.cipher(tx)[:32])  # built once: only the CTR IV changes per packet
        self._tx_mac = key.hmac(tx)[:32]
        self._rx_enc = algorithms.AES(key.cipher(rx)[:32])
        self._rx_mac = key.hmac(rx)[:32]

    def wrap(self, header: bytes, body: bytes, replay_id: int, now: int) -> bytes:
        pid = struct.pack("!II", replay_id, now & 0xFFFFFFFF)
        tag = hmac.digest(self._tx_mac, header + pid + body, sha256)
        enc = Cipher(self._tx_enc, modes.CTR(tag[:16])).encryptor()
        return header + pid + tag + enc.update(body) + enc.finalize()

    def unwrap(self, data: bytes) -> tuple[int, bytes]:
        """Return (replay packet id, plaintext body) or raise WrapError."""
        if len(data) < HEADER_SIZE + self.overhead + 1:
            raise WrapError("tls-crypt packet too short")
        pid_end = HEADER_SIZE + REPLAY_ID_SIZE
        tag = data[pid_end : pid_end + TLS_CRYPT_TAG_SIZE]
        dec = Cipher(self._rx_enc, modes.CTR(tag[:16])).decryptor()
        body = dec.update(data[pid_end + TLS_CRYPT_TAG_SIZE :]) + dec.finalize()
        expected = hmac.digest(self._rx_mac, data[:pid_end] + body, sha256)
        if not hmac.compare_digest(tag, expected):
            raise WrapError("tls-crypt authentication failed (wrong key?)")
        (replay_id,) = struct.unpack_from("!I", data, HEADER_SIZE)
        return replay_id, body


class TlsAuth:
    """HMAC-authenticated control packets (`--tls-auth`, digest of `--auth`: SHA1 unless the profile says)."""

    def __init__(self, key: Key2, digest: str = "sha1", server: bool = True) -> None:
        self._digest = digest
        size = {"sha1": 20, "sha256": 32, "sha512": 64}[digest]
        self.hmac_size = size
        self.overhead = size + REPLAY_ID_SIZE
        tx, rx = (0, 1) if server else (1, 0)
        self._tx_mac = key.hmac(tx)[:size]
        self._rx_mac = key.hmac(rx)[:size]

    def wrap(self, header: bytes, body: bytes, replay_id: int, now: int) -> bytes:
        pid = struct.pack("!II", replay_id, now & 0xFFFFFFFF)
        mac = hmac.digest(self._tx_mac, pid + header + body, self._digest)
        return header + mac + pid + body

    def unwrap(self, data: bytes) -> tuple[int, bytes]:
        if len(data) < HEADER_SIZE + self.overhead + 1:
            raise WrapError("tls-auth packet too short")
        mac = data[HEADER_SIZE : HEADER_SIZE + self.hmac_size]
        pid = data[HEADER_SIZE + self.hmac_size : HEADER_SIZE + self.overhead]
        body = data[HEADER_SIZE + self.overhead :]
        expected = hmac.digest(self._rx_mac, pid + data[:HEADER_SIZE] + body, self._digest)
        if not hmac.compare_digest(mac, expected):
            raise WrapError("tls-auth HMAC verification failed (wrong key or digest?)")
        (replay_id,) = struct.unpack_from("!I", pid)
        return replay_id, bytes(body)


TlsWrap = TlsCrypt | TlsAuth
