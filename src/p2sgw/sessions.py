"""The one session model shared by every protocol, and the registry of live sessions.

A protocol front-end creates a `Session` once the user is authenticated and an address is
leased; management (CLI, control socket, later REST/metrics) only ever sees this model.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from dataclasses import dataclass, field
from typing import Protocol


class Tunnel(Protocol):
    """What a protocol front-end offers the session model for one client."""

    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int

    def disconnect(self, message: str) -> None: ...

    def abandon(self, reason: str) -> None: ...


@dataclass(eq=False)
class Session:
    protocol: str  # "openvpn-udp", "openvpn-tcp", later "sstp", "ikev2"
    identity: str
    auth_method: str
    remote: str
    tunnel: Tunnel
    virtual_ip: ipaddress.IPv4Address | None = None
    policy_group: str = "default"
    cert_thumbprint: str | None = None
    id: str = ""
    connected_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    radius_class: list[bytes] = field(default_factory=list)
    terminate_cause: str = "Lost-Carrier"  # RADIUS Acct-Terminate-Cause name, set by whoever ends it
    certificate_chain: list = field(default_factory=list, repr=False)  # x509, leaf first, for cert sign-ins
    token_id: bytes | None = field(default=None, repr=False)  # the auth-token standing for this sign-in

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_session_id(self.protocol)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "identity": self.identity,
            "protocol": self.protocol,
            "virtual_ip": str(self.virtual_ip) if self.virtual_ip else None,
            "remote": self.remote,
            "connected_at": self.connected_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "bytes_in": self.tunnel.bytes_in,
            "bytes_out": self.tunnel.bytes_out,
            "auth_method": self.auth_method,
            "policy_group": self.policy_group,
        }


def new_session_id(protocol: str) -> str:
    """`OVPN_<uuid>` / `SSTP_<uuid>` / `IKEv2_<uuid>`, the form operators know from the cloud gateway."""
    prefix = "OVPN" if protocol.startswith("openvpn") else "IKEv2" if protocol == "ikev2" else protocol.upper()
    return f"{prefix}_{uuid.uuid4()}"


class SessionRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        # sessions by the sign-in token they hold (set before add, never changed): a reconnect
        # of the same sign-in finds its stale session without scanning every session
        self._by_token: dict[bytes, dict[str, Session]] = {}

    def add(self, session: Session) -> None:
        self._by_id[session.id] = session
        if session.token_id is not None:
            self._by_token.setdefault(session.token_id, {})[session.id] = session

    def remove(self, session: Session) -> None:
        self._by_id.pop(session.id, None)
        if session.token_id is not None:
            holders = self._by_token.get(session.token_id)
            if holders is not None:
                holders.pop(session.id, None)
                if not holders:
                    del self._by_token[session.token_id]

    def with_token(self, token_id: bytes) -> list[Session]:
        return list(self._by_token.get(token_id, {}).values())

    def get(self, session_id: str) -> Session | None:
        return self._by_id.get(session_id)

    def __iter__(self):
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def by_identity(self, identity: str) -> list[Session]:
        return [s for s in self._by_id.values() if s.identity == identity]
