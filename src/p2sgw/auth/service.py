"""The gateway's authentication policy: which backends a user must pass, session tokens, and
challenge state for clients that answer by reconnecting (OpenVPN CRV1).

Protocol front-ends only call `authenticate()`; what is enabled (certificate, RADIUS, both or
either) is configuration.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, replace

from ..config import GatewayConfig
from .base import AuthResult, Challenge, Credentials
from .certificate import CertificateAuthenticator
from .tokens import AuthTokens, is_token

CHALLENGE_LIFETIME = 300.0


@dataclass(slots=True)
class _Remembered:
    """What a token stands for: the authorization granted at the real sign-in."""

    result: AuthResult
    expires: float


class AuthService:
    def __init__(self, config: GatewayConfig, certificates: CertificateAuthenticator, radius=None,
                 tokens: AuthTokens | None = None) -> None:
        self.config = config
        self.certificates = certificates
        self.radius = radius  # auth.radius.RadiusAuthenticator or None
        self.tokens = tokens or AuthTokens.random(config.openvpn.auth_token_lifetime)
        self._granted: dict[bytes, _Remembered] = {}  # token session id -> authorization
        self._challenges: dict[str, tuple[str, bytes, float]] = {}  # CRV1 state id -> (user, RADIUS State, expiry)

    @property
    def types(self) -> list[str]:
        return self.config.vpn_auth_types

    def requires_client_certificate(self) -> bool:
        return "certificate" in self.types and ("radius" not in self.types or self.config.auth_combination == "all")

    def may_wait(self, creds: Credentials) -> float:
        """Seconds this sign-in may take (0 = answers at once): front-ends tell clients to wait."""
        if self.radius is None or creds.username is None or is_token(creds.password):
            return 0.0
        return self.radius.max_wait

    def wants_browser(self, creds: Credentials) -> bool:
        """OIDC sign-in is due: enabled, and the client did not present a valid session token
        (the username/password an SSO profile sends are placeholders)."""
        if "oidc" not in self.types:
            return False
        if is_token(creds.password) and creds.username and self._granted_for(creds.username, creds.password or "",
                                                                              time.time()):
            return False
        if "certificate" in self.types and creds.peer_chain and self.certificates.check(creds).ok:
            return False  # certificate or browser: either signs in
        return True

    def authenticate_at_once(self, creds: Credentials) -> AuthResult | None:
        """The outcome when it needs no RADIUS round trip (a certificate, a session token, a
        refusal), else None: front-ends then await authenticate(). Most sign-ins end here, without
        a task or a loop turn."""
        return self._at_once(creds)[0]

    async def authenticate(self, creds: Credentials) -> AuthResult:
        result, cert = self._at_once(creds)
        if result is not None:
            return result
        return _with_certificate(await self._password(creds), cert)

    def _at_once(self, creds: Credentials) -> tuple[AuthResult | None, AuthResult | None]:
        """(the outcome, None) when known now; else (None, the certificate check RADIUS must add to)."""
        if "oidc" in self.types and is_token(creds.password) and creds.username:
            return self._token(creds.username, creds.password or "", time.time()), None
        cert = self.certificates.check(creds) if "certificate" in self.types else None
        if "radius" not in self.types or self.radius is None:
            return cert or AuthResult.refuse("none", "no authentication method is enabled"), None
        need_both = "certificate" in self.types and self.config.auth_combination == "all"
        if cert is not None and need_both and not cert.ok:
            return cert, None
        if cert is not None and not need_both and cert.ok:
            return cert, None
        if creds.username is None:
            if cert is not None and creds.peer_chain and not need_both:
                return cert, None
            return AuthResult.refuse("radius", "username and password required"), None
        also = cert if need_both else None  # a passed certificate that RADIUS (or its token) must join
        if is_token(creds.password):
            return _with_certificate(self._token(creds.username, creds.password or "", time.time()), also), None
        return None, also

    async def _password(self, creds: Credentials) -> AuthResult:
        assert creds.username is not None
        now = time.time()
        state = creds.challenge_state
        password = creds.password or ""
        if password.startswith("CRV1::"):  # answer to a dynamic challenge, given by reconnecting
            state_id, _, answer = password[len("CRV1::"):].partition("::")
            remembered = self._challenges.pop(state_id, None)
            if remembered is None or remembered[0] != creds.username or remembered[2] < now:
                return AuthResult.refuse("radius", "challenge expired or unknown", creds.username)
            state, password = remembered[1], answer
        return await self.radius.authenticate_password(creds, password, state)

    def _granted_for(self, username: str, token: str, now: float) -> AuthResult | None:
        info = self.tokens.verify(username, token, now)
        granted = self._granted.get(info.session_id) if info else None
        if info is None or granted is None or granted.expires < now:
            return None
        return replace(granted.result, token_id=info.session_id)

    def _token(self, username: str, token: str, now: float) -> AuthResult:
        return self._granted_for(username, token, now) or AuthResult.refuse(
            "token", "session token expired, sign in again", username)

    def issue_token(self, result: AuthResult, now: float) -> tuple[str, bytes]:
        """A token for a successful password/browser sign-in, remembered with its authorization;
        returns (token, token id) — the id lets `revoke_token` force a real sign-in next time."""
        sid = os.urandom(12)
        self._granted[sid] = _Remembered(result, now + self.tokens.lifetime)
        self._forget_expired(now)
        return self.tokens.issue(result.identity, now, session_id=sid), sid

    def revoke_token(self, token_id: bytes | None) -> None:
        if token_id is not None:
            self._granted.pop(token_id, None)

    def remember_challenge(self, username: str, challenge: Challenge, now: float) -> str:
        """A state id for clients that answer a challenge by reconnecting (OpenVPN CRV1)."""
        state_id = base64.urlsafe_b64encode(os.urandom(12)).decode()
        self._challenges[state_id] = (username, challenge.state, now + CHALLENGE_LIFETIME)
        self._forget_expired(now)
        return state_id

    def _forget_expired(self, now: float) -> None:
        if len(self._granted) > 1000:
            for sid in [s for s, r in self._granted.items() if r.expires < now]:
                del self._granted[sid]
        if len(self._challenges) > 1000:
            for sid in [s for s, c in self._challenges.items() if c[2] < now]:
                del self._challenges[sid]


def _with_certificate(result: AuthResult, cert: AuthResult | None) -> AuthResult:
    """A passed password (or token) check that a required, passed certificate check joins."""
    if result.ok and cert is not None:
        return replace(result, method="certificate+radius", cert_thumbprint=cert.cert_thumbprint)
    return result
