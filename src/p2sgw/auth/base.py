"""One authentication interface for every protocol and backend (certificate now; RADIUS, OIDC later).

A protocol front-end turns what its client sent into `Credentials`; a backend answers with an
`AuthResult`. Backends are async because RADIUS and OIDC wait on the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509


@dataclass(slots=True)
class Credentials:
    protocol: str
    remote: str
    peer_chain: list[x509.Certificate] = field(default_factory=list)  # leaf first, TLS-verified
    chain_error: str | None = None  # what TLS chain verification reported, if anything
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class AuthResult:
    ok: bool
    identity: str = ""
    method: str = ""
    reason: str = ""  # shown to the client on refusal, logged always
    policy_group: str = "default"
    cert_thumbprint: str | None = None

    @classmethod
    def refuse(cls, method: str, reason: str, identity: str = "") -> AuthResult:
        return cls(False, identity=identity, method=method, reason=reason)


class Authenticator(Protocol):
    method: str

    async def authenticate(self, credentials: Credentials) -> AuthResult: ...
