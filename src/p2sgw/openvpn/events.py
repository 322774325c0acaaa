"""What an OpenVPN session tells its owner (small dataclasses, as in aioquic/h11)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509


class Event:
    __slots__ = ()


@dataclass(slots=True)
class AuthRequest(Event):
    """Key-method-2 arrived: the owner must call authorize() or deny() for this key_id."""

    key_id: int
    renegotiation: bool
    username: str | None
    password: str | None = field(repr=False)
    peer_info: dict[str, str]
    peer_chain: list[x509.Certificate]
    tls_version: str


@dataclass(slots=True)
class Established(Event):
    key_id: int
    cipher: str
    tls_version: str


@dataclass(slots=True)
class RenegotiationStarted(Event):
    key_id: int
    by_client: bool


@dataclass(slots=True)
class Renegotiated(Event):
    key_id: int


@dataclass(slots=True)
class AuthFailed(Event):
    key_id: int
    reason: str


@dataclass(slots=True)
class HandshakeFailed(Event):
    key_id: int
    reason: str


@dataclass(slots=True)
class ClientExit(Event):
    reason: str


@dataclass(slots=True)
class ControlMessage(Event):
    key_id: int
    text: str


@dataclass(slots=True)
class ChallengeResponse(Event):
    """The user's answer to a CR_TEXT challenge (CR_RESPONSE, base64-decoded)."""

    key_id: int
    response: str = field(repr=False)


@dataclass(slots=True)
class PacketDropped(Event):
    reason: str


@dataclass(slots=True)
class SessionClosed(Event):
    reason: str


@dataclass(slots=True)
class DataKeysChanged(Event):
    """remote_data sessions: the data-channel key set changed; the data plane needs the new one."""


@dataclass(slots=True)
class KeepaliveDue(Event):
    """remote_data sessions: nothing was sent for a ping interval; the data plane sends the ping."""
