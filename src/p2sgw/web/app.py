"""The gateway's HTTPS endpoint (aiohttp): browser sign-in for VPN clients.

    GET /a/<id>          the WEB_AUTH URL a VPN client shows: starts the OIDC authorization-code
                         flow (PKCE, state, nonce) at the identity provider
    GET /oidc/callback   the redirect URI registered at the provider: code -> ID token ->
                         the waiting VPN session is completed or refused
    GET /healthz         liveness

Served on the OpenVPN TCP port (port-share) and optionally a port of its own.
"""

from __future__ import annotations

import html
import time

from aiohttp import web

from ..auth.base import AuthResult
from ..auth.oidc import OidcError
from ..logs import log, warn
from .signin import SignInBroker

CALLBACK_PATH = "/oidc/callback"


def _page(title: str, message: str, ok: bool, status: int = 200) -> web.Response:
    color = "#1a7f37" if ok else "#cf222e"
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}}
h1{{color:{color};font-size:1.4rem}}</style></head>
<body><h1 id="result">{html.escape(title)}</h1><p id="message">{html.escape(message)}</p></body></html>"""
    return web.Response(text=body, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


class WebEndpoint:
    def __init__(self, broker: SignInBroker, oidc) -> None:
        self.broker = broker
        self.oidc = oidc  # auth.oidc.OidcProvider, or None when OIDC is not configured
        self.app = web.Application()
        self.app.add_routes([
            web.get("/a/{pending_id}", self.start_sign_in),
            web.get(CALLBACK_PATH, self.callback),
            web.get("/healthz", self.health),
        ])
        self.runner = web.AppRunner(self.app, access_log=None)

    async def start(self) -> None:
        await self.runner.setup()

    def protocol_factory(self):
        """aiohttp's low-level server is an asyncio protocol factory: sockets are handed to it
        by the shared TCP listener (or a listener of its own)."""
        return self.runner.server

    async def close(self) -> None:
        await self.runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def start_sign_in(self, request: web.Request) -> web.StreamResponse:
        pending = self.broker.get(request.match_info["pending_id"], time.time())
        if pending is None or self.oidc is None:
            return _page("Sign-in link expired", "This sign-in link is no longer valid. Connect again from "
                         "your VPN client to get a new one.", ok=False, status=404)
        if pending.started:
            return _page("Sign-in already started", "This link was already used. Connect again from your VPN "
                         "client if the sign-in did not finish.", ok=False, status=409)
        try:
            await self.oidc.ensure_discovered()
            authorization = self.oidc.begin(pending.pending_id, not_after=pending.expires)
        except OidcError as exc:  # IdP unreachable: the waiting client must hear about it too
            warn("oidc.begin_failed", pending=pending.pending_id, reason=str(exc), detail=exc.detail)
            self.broker.finish(pending.pending_id, AuthResult.refuse("oidc", str(exc)))
            return _page("Sign-in failed", str(exc), ok=False, status=502)
        pending.started = True
        log("oidc.redirect", pending=pending.pending_id, description=pending.description)
        raise web.HTTPFound(authorization.url, headers={"Cache-Control": "no-store"})

    async def callback(self, request: web.Request) -> web.Response:
        if self.oidc is None:
            return _page("Not available", "Browser sign-in is not configured on this gateway.", ok=False, status=404)
        try:
            authorization, identity = await self.oidc.handle_callback(dict(request.query))
        except OidcError as exc:
            warn("oidc.sign_in_refused", pending=exc.pending_id, code=exc.code, reason=str(exc), detail=exc.detail)
            if exc.pending_id is not None:
                self.broker.finish(exc.pending_id, AuthResult.refuse("oidc", str(exc)))
            return _page("Sign-in failed", str(exc), ok=False, status=400 if exc.pending_id is None else 403)
        result = AuthResult(True, identity=identity.username, method="oidc", group_hints=list(identity.groups))
        if not self.broker.finish(authorization.pending_id, result):
            return _page("Sign-in expired", "Your VPN client stopped waiting. Connect again.", ok=False, status=410)
        log("oidc.signed_in", pending=authorization.pending_id, identity=identity.username,
            groups=len(identity.groups), amr=",".join(identity.amr))
        return _page("You are signed in", f"Signed in as {identity.username}. You can close this window; "
                     "your VPN connection is being established.", ok=True)
