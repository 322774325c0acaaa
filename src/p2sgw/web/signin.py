"""Browser sign-ins waiting for a VPN client: short one-time ids that the WEB_AUTH URL carries.

A protocol front-end registers what to do when the browser sign-in succeeds or fails; the web
endpoint looks the id up. Ids are single use and expire with the client's pending timeout.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..auth.base import AuthResult

ID_BYTES = 16  # 22 url-safe characters: the WEB_AUTH URL stays far below openvpn's ~240-char limit


@dataclass(slots=True)
class PendingSignIn:
    pending_id: str
    description: str  # shown on the landing page: which device is asking
    expires: float
    done: Callable[[AuthResult], None]  # called once, with ok or a refusal
    started: bool = False  # the browser has been sent to the identity provider


class SignInBroker:
    def __init__(self, limit: int = 10000) -> None:
        self._pending: dict[str, PendingSignIn] = {}
        self._limit = limit
        self.on_cancel: list[Callable[[str], object]] = []  # e.g. the OIDC provider forgets its states

    def register(self, description: str, expires: float, done: Callable[[AuthResult], None]) -> str:
        if len(self._pending) >= self._limit:
            self.expire(min(p.expires for p in self._pending.values()))
        pending_id = base64.urlsafe_b64encode(os.urandom(ID_BYTES)).decode().rstrip("=")
        self._pending[pending_id] = PendingSignIn(pending_id, description, expires, done)
        return pending_id

    def get(self, pending_id: str, now: float) -> PendingSignIn | None:
        pending = self._pending.get(pending_id)
        if pending is None or pending.expires < now:
            return None
        return pending

    def finish(self, pending_id: str, result: AuthResult) -> bool:
        """Deliver the outcome once; False if the id is unknown or already finished."""
        pending = self._pending.pop(pending_id, None)
        if pending is None:
            return False
        if not result.ok:
            for hook in self.on_cancel:
                hook(pending_id)
        pending.done(result)
        return True

    def cancel(self, pending_id: str) -> None:
        self._pending.pop(pending_id, None)
        for hook in self.on_cancel:
            hook(pending_id)

    def expire(self, now: float) -> None:
        for pending_id in [p for p, s in self._pending.items() if s.expires <= now]:
            self.finish(pending_id, AuthResult.refuse("oidc", "browser sign-in timed out"))
