"""OpenVPN control-packet layout (ovpn26 ssl_pkt.h): opcodes, ACK blocks, reliable packet ids.

A control packet on the wire is `op|key_id, own session id, <wrapping>, body`; this module
handles the header and the body `ack_count, ack ids, [remote sid], [msg packet id], payload`.
Wrapping (tls-crypt/tls-auth) lives in tls_wrap.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

P_CONTROL_SOFT_RESET_V1 = 3
P_CONTROL_V1 = 4
P_ACK_V1 = 5
P_DATA_V1 = 6
P_CONTROL_HARD_RESET_CLIENT_V2 = 7
P_CONTROL_HARD_RESET_SERVER_V2 = 8
P_DATA_V2 = 9
P_CONTROL_HARD_RESET_CLIENT_V3 = 10
P_CONTROL_WKC_V1 = 11

CONTROL_OPCODES = frozenset(
    {P_CONTROL_SOFT_RESET_V1, P_CONTROL_V1, P_ACK_V1, P_CONTROL_HARD_RESET_CLIENT_V2, P_CONTROL_HARD_RESET_SERVER_V2}
)
RELIABLE_OPCODES = CONTROL_OPCODES - {P_ACK_V1}
DATA_OPCODES = frozenset({P_DATA_V1, P_DATA_V2})

SID_SIZE = 8
HEADER_SIZE = 1 + SID_SIZE
MAX_ACKS_PIGGYBACK = 4
MAX_ACKS_STANDALONE = 8


class PacketError(ValueError):
    """Malformed packet from the peer: the caller drops it and logs once."""


def opcode_of(first_byte: int) -> int:
    return first_byte >> 3


def key_id_of(first_byte: int) -> int:
    return first_byte & 0x07


def op_byte(opcode: int, key_id: int) -> int:
    return (opcode << 3) | (key_id & 0x07)


@dataclass(slots=True)
class ControlPacket:
    opcode: int
    key_id: int
    session_id: bytes  # the sender's own session id
    acks: list[int] = field(default_factory=list)
    remote_session_id: bytes | None = None  # present when acks is non-empty
    packet_id: int | None = None  # reliable message id; None for P_ACK_V1
    payload: bytes = b""

    def header(self) -> bytes:
        return bytes([op_byte(self.opcode, self.key_id)]) + self.session_id

    def body(self) -> bytes:
        """The part after the header (what tls-crypt encrypts)."""
        if len(self.acks) > 255:
            raise ValueError("too many acks")
        parts = [bytes([len(self.acks)])]
        if self.acks:
            parts.append(struct.pack(f"!{len(self.acks)}I", *self.acks))
            assert self.remote_session_id is not None and len(self.remote_session_id) == SID_SIZE
            parts.append(self.remote_session_id)
        if self.opcode != P_ACK_V1:
            assert self.packet_id is not None
            parts.append(struct.pack("!I", self.packet_id))
            parts.append(self.payload)
        return b"".join(parts)


def split_header(data: bytes) -> tuple[int, int, bytes]:
    """Return (opcode, key_id, sender session id) of a control packet."""
    if len(data) < HEADER_SIZE:
        raise PacketError(f"control packet too short ({len(data)} bytes)")
    return opcode_of(data[0]), key_id_of(data[0]), bytes(data[1:HEADER_SIZE])


def parse_body(opcode: int, key_id: int, session_id: bytes, body: bytes) -> ControlPacket:
    if opcode not in CONTROL_OPCODES:
        raise PacketError(f"opcode {opcode} is not a control opcode")
    if not body:
        raise PacketError("empty control body")
    n = body[0]
    if n > MAX_ACKS_STANDALONE:
        raise PacketError(f"ack count {n} too large")
    pos = 1
    acks: list[int] = []
    remote = None
    if n:
        end = pos + 4 * n + SID_SIZE
        if len(body) < end:
            raise PacketError("truncated ack block")
        acks = list(struct.unpack_from(f"!{n}I", body, pos))
        remote = bytes(body[pos + 4 * n : end])
        pos = end
    packet_id = None
    payload = b""
    if opcode == P_ACK_V1:
        if not acks:
            raise PacketError("ACK packet without acks")
        if pos != len(body):
            raise PacketError("trailing bytes after ACK")
    else:
        if len(body) < pos + 4:
            raise PacketError("truncated message packet id")
        (packet_id,) = struct.unpack_from("!I", body, pos)
        payload = bytes(body[pos + 4 :])
    return ControlPacket(opcode, key_id, session_id, acks, remote, packet_id, payload)
