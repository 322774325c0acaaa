"""RADIUS as an authentication backend (PAP for OpenVPN passwords; MS-CHAPv2/EAP relays are in
io/radius.py for SSTP and IKEv2).

The gateway relays what the user typed and obeys the server: Accept (with Framed-IP-Address,
Session-Timeout, Class and the group attribute), Reject (with its Reply-Message), or Challenge
(an OTP prompt the user must answer; the State goes back with the answer).
"""

from __future__ import annotations

from ..config import RadiusSettings
from ..io.radius import AsyncRadiusClient, RadiusUnavailable
from ..logs import warn
from .base import AuthResult, Challenge, Credentials

METHOD = "radius"


class RadiusAuthenticator:
    method = METHOD

    def __init__(self, settings: RadiusSettings, client: AsyncRadiusClient | None = None) -> None:
        self.settings = settings
        self.client = client or AsyncRadiusClient(settings)

    @property
    def max_wait(self) -> float:
        """Worst case for one sign-in: every server waited for in turn."""
        return self.settings.timeout * max(1, len(self.settings.servers))

    async def authenticate_password(self, creds: Credentials, password: str, state: bytes | None) -> AuthResult:
        username = creds.username or ""
        extra = [("Calling-Station-Id", creds.remote.rsplit(":", 1)[0])]
        if creds.session_id:
            extra.append(("Acct-Session-Id", creds.session_id))
        try:
            reply = await self.client.pap(username, password, state=state, extra=extra)
        except RadiusUnavailable as exc:
            warn("radius.unavailable", identity=username, reason=exc.reason)
            return AuthResult.refuse(METHOD, "authentication service unavailable, try again later", username)
        message = reply.reply_message
        if reply.challenged:
            if reply.state is None:
                return AuthResult.refuse(METHOD, "RADIUS challenge without State", username)
            return AuthResult(False, username, METHOD, "challenge",
                              challenge=Challenge(message or "Enter your one-time code", echo=False,
                                                  state=reply.state))
        if not reply.accepted:
            return AuthResult.refuse(METHOD, message or "wrong username or password", username)
        hints = []
        for value in reply.group_values(self.settings.group_attribute):
            hints += [value.decode("utf-8", "replace"), value.hex()]
        return AuthResult(
            True,
            identity=username,
            method=METHOD,
            framed_ip=reply.framed_ip,  # None for the "NAS chooses" values
            session_timeout=reply.session_timeout,
            interim_interval=reply.acct_interim_interval,
            radius_class=reply.class_values,
            group_hints=hints,
        )

    def close(self) -> None:
        self.client.close()
