"""AEAD data channel (ovpn26 crypto.c openvpn_encrypt_aead/openvpn_decrypt_aead).

P_DATA_V2 wire format: op|key_id (1) peer_id (3) | packet_id (4) | tag (16) | ciphertext.
Nonce = packet_id || implicit IV (8 bytes from the hmac slot); AAD = the first 8 bytes.
This is the hot path: one object per key, prebuilt header, no per-packet dict lookups.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .packets import P_DATA_V1, P_DATA_V2, op_byte
from .replay import ReplayWindow
from .static_key import Key2

TAG_SIZE = 16
V2_OVERHEAD = 4 + 4 + TAG_SIZE
PACKET_ID_WRAP_TRIGGER = 0xFF000000
NO_PEER_ID = 0xFFFFFF

KEEPALIVE_PING = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")
OCC_EXIT = 6

_CIPHER_KEY_SIZE = {"AES-256-GCM": 32, "AES-128-GCM": 16, "CHACHA20-POLY1305": 32}
SUPPORTED_CIPHERS = tuple(_CIPHER_KEY_SIZE)

_pack_id = struct.Struct("!I").pack
_unpack_id = struct.Struct("!I").unpack_from


class DataKey:
    """One direction pair of data-channel keys for one key_id, server side."""

    __slots__ = (
        "_header",
        "_rx",
        "_rx_iv",
        "_tx",
        "_tx_iv",
        "cipher",
        "key_id",
        "last_error",
        "peer_id",
        "replay",
        "spec",
        "tx_packet_id",
    )

    def __init__(
        self, cipher: str, key2: Key2, key_id: int, peer_id: int, server: bool = True, data_v2: bool = True
    ) -> None:
        # what another process needs to build the same key (a data-plane worker, dataplane/)
        self.spec = self.make_spec(cipher, key2, key_id, peer_id, server, data_v2)
        size = _CIPHER_KEY_SIZE[cipher]
        aead = ChaCha20Poly1305 if cipher == "CHACHA20-POLY1305" else AESGCM
        tx, rx = (1, 0) if server else (0, 1)  # server = key direction INVERSE
        self.cipher = cipher
        self.key_id = key_id
        self.peer_id = peer_id
        self._tx = aead(key2.cipher(tx)[:size])
        self._rx = aead(key2.cipher(rx)[:size])
        self._tx_iv = key2.hmac(tx)[:8]
        self._rx_iv = key2.hmac(rx)[:8]
        if data_v2:
            self._header = struct.pack("!I", (op_byte(P_DATA_V2, key_id) << 24) | (peer_id & 0xFFFFFF))
        else:
            self._header = bytes([op_byte(P_DATA_V1, key_id)])
        self.tx_packet_id = 0
        self.replay = ReplayWindow(64)
        self.last_error = ""  # why the last decrypt() returned None (set on the failure path only)

    @staticmethod
    def make_spec(cipher: str, key2: Key2, key_id: int, peer_id: int, server: bool = True,
                  data_v2: bool = True) -> tuple:
        return (cipher, key2.raw, key_id, peer_id, server, data_v2)

    @classmethod
    def from_spec(cls, spec: tuple) -> DataKey:
        cipher, raw, key_id, peer_id, server, data_v2 = spec
        return cls(cipher, Key2(raw), key_id, peer_id, server, data_v2)

    @property
    def needs_renegotiation(self) -> bool:
        return self.tx_packet_id >= PACKET_ID_WRAP_TRIGGER

    def encrypt(self, plaintext: bytes) -> bytes | None:
        """None once all 2^32 packet ids are used (renegotiation should have replaced the key long before)."""
        if self.tx_packet_id == 0xFFFFFFFF:
            return None
        self.tx_packet_id += 1
        pid = _pack_id(self.tx_packet_id)
        header = self._header
        aad = header + pid if len(header) == 4 else pid  # P_DATA_V1 authenticates the packet id only
        sealed = self._tx.encrypt(pid + self._tx_iv, plaintext, aad)
        return b"".join((header, pid, sealed[-TAG_SIZE:], sealed[:-TAG_SIZE]))

    def decrypt(self, packet: bytes) -> bytes | None:
        """Plaintext, or None for a forged, corrupt or replayed packet (caller counts the drop)."""
        if len(packet) < 1 + 4 + TAG_SIZE:
            self.last_error = "truncated data packet"
            return None
        hdr = 4 if packet[0] >> 3 == P_DATA_V2 else 1
        if len(packet) < hdr + 4 + TAG_SIZE:
            self.last_error = "truncated data packet"
            return None
        (pid,) = _unpack_id(packet, hdr)
        if not self.replay.check(pid):
            self.last_error = "replayed or too old data packet"
            return None
        aad_end = hdr + 4
        tag_end = aad_end + TAG_SIZE
        try:
            plain = self._rx.decrypt(
                packet[hdr:aad_end] + self._rx_iv,
                packet[tag_end:] + packet[aad_end:tag_end],
                packet[:aad_end] if hdr == 4 else packet[hdr:aad_end],
            )
        except InvalidTag:
            self.last_error = "data packet failed authentication"
            return None
        self.replay.update(pid)
        return plain


class KeySpec:
    """A data key as the control process keeps it once a data-plane worker serves the session:
    only what rebuilding it there takes (`spec`), without the two AEAD contexts (~5.7 KiB).
    It never encrypts here: the worker's copy owns the packet-id counter."""

    __slots__ = ("key_id", "spec")

    needs_renegotiation = False  # the worker's counter is not seen here; reneg_sec still applies

    last_error = "data packet for a session served by a data worker"

    def __init__(self, spec: tuple) -> None:
        self.spec = spec
        self.key_id = spec[2]

    def encrypt(self, plaintext: bytes) -> None:
        return None

    def decrypt(self, packet: bytes) -> None:
        return None


# DataChannel.stats slots: one 32-byte row per session, so it can live in shared memory
PACKETS_IN, BYTES_IN, PACKETS_OUT, BYTES_OUT = range(4)


def new_stats() -> memoryview:
    return memoryview(bytearray(32)).cast("Q")


class DataChannel:
    """A session's data-channel keys (by key_id) and traffic counters.

    Shared by the protocol core and the data-plane workers (dataplane/worker.py), so both decrypt
    and count the same way. `stats` may be a row of a shared-memory table that the control
    process reads for keepalive and accounting."""

    __slots__ = ("exited", "last_drop", "rx_keys", "stats", "tx_key")

    def __init__(self, stats: memoryview | None = None) -> None:
        self.rx_keys: list[DataKey | KeySpec | None] = [None] * 8
        self.tx_key: DataKey | KeySpec | None = None
        self.stats = new_stats() if stats is None else stats
        self.last_drop = ""
        self.exited = False  # the client sent explicit-exit-notify on the data channel

    def decrypt(self, packet: bytes) -> bytes | None:
        """An IP packet for the TUN, b"" when consumed here (keepalive, exit notification), None
        when dropped (`last_drop` says why)."""
        key = self.rx_keys[packet[0] & 7]
        if key is None:
            self.last_drop = f"data packet for inactive key_id {packet[0] & 7}"
            return None
        plain = key.decrypt(packet)
        if plain is None:
            self.last_drop = key.last_error
            return None
        stats = self.stats
        stats[PACKETS_IN] += 1
        if len(plain) <= 17:
            if plain == KEEPALIVE_PING:
                return b""
            if is_occ_exit(plain):
                self.exited = True
                return b""
        stats[BYTES_IN] += len(plain)
        return plain

    def encrypt(self, ip_packet: bytes) -> bytes | None:
        key = self.tx_key
        if key is None:
            return None
        stats = self.stats
        stats[PACKETS_OUT] += 1
        stats[BYTES_OUT] += len(ip_packet)
        return key.encrypt(ip_packet)

    def keepalive(self) -> bytes | None:
        """The keepalive ping, encrypted (counted as a packet out, not as bytes)."""
        key = self.tx_key
        if key is None:
            return None
        self.stats[PACKETS_OUT] += 1
        return key.encrypt(KEEPALIVE_PING)

    def clear(self) -> None:
        self.rx_keys = [None] * 8
        self.tx_key = None


def is_keepalive(payload: bytes) -> bool:
    return payload == KEEPALIVE_PING


def is_occ_exit(payload: bytes) -> bool:
    return len(payload) == 17 and payload[:16] == OCC_MAGIC and payload[16] == OCC_EXIT
