"""One authentication interface for every protocol and backend (certificate, RADIUS; OIDC later).

A protocol front-end turns what its client sent into `Credentials`; a backend answers with an
`AuthResult`: accepted, refused (with a reason for the user and the log), or a `Challenge` the
user must answer (RADIUS Access-Challenge: OTP prompts). Backends are async because RADIUS and
OIDC wait on the network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509


@dataclass(slots=True)
class Credentials:
    protocol: str
    remote: str
    session_id: str = ""  # also the RADIUS Acct-Session-Id
    peer_chain: list[x509.Certificate] = field(default_factory=list)  # leaf first, TLS-verified
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    challenge_state: bytes | None = field(default=None, repr=False)  # from the Challenge being answered


@dataclass(slots=True)
class Challenge:
    text: str  # the prompt (RADIUS Reply-Message)
    echo: bool  # may the client show what the user types
    state: bytes = field(repr=False)  # opaque: handed back in Credentials.challenge_state


@dataclass(slots=True)
class AuthResult:
    ok: bool
    identity: str = ""
    method: str = ""
    reason: str = ""  # shown to the client on refusal, logged always
    cert_thumbprint: str | None = None
    challenge: Challenge | None = None
    # what the backend says about the user's authorization
    group_hints: list[str] = field(default_factory=list)  # values that select a policy group
    framed_ip: ipaddress.IPv4Address | None = None  # a static address for this user
    session_timeout: int | None = None
    interim_interval: int | None = None
    radius_class: list[bytes] = field(default_factory=list)  # echoed in accounting
    token_id: bytes | None = field(default=None, repr=False)  # set when an auth-token signed the user in

    @classmethod
    def refuse(cls, method: str, reason: str, identity: str = "") -> AuthResult:
        return cls(False, identity=identity, method=method, reason=reason)


class Authenticator(Protocol):
    method: str

    async def authenticate(self, credentials: Credentials) -> AuthResult: ...
