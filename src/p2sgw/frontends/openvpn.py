"""OpenVPN front-end: ties the sans-I/O core to authentication, addresses and the session model.

The I/O adapters (io/openvpn_udp.py, io/openvpn_tcp.py) own sockets and call in here for
control packets; data packets go straight from the adapter to `OpenVPNPeer.core` and the router.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..auth.base import AuthResult, Challenge, Credentials
from ..logs import error, log, warn
from ..openvpn import events as ev
from ..openvpn.push import ClientNetworkConfig
from ..openvpn.server import MAX_PEER_ID, OpenVPNListener
from ..openvpn.session import OpenVPNServerSession, SessionSettings
from ..sessions import Session, new_session_id

PENDING_MARGIN = 10  # seconds beyond the RADIUS worst case before the client gives up
CHALLENGE_TIMEOUT = 300  # seconds a user has to type a one-time code

if TYPE_CHECKING:
    from ..gateway import Gateway


class OpenVPNPeer:
    """One OpenVPN client as the rest of the gateway sees it (implements sessions.Tunnel)."""

    __slots__ = (
        "addr",
        "challenge",
        "closed",
        "core",
        "encrypt",
        "frontend",
        "owner",
        "pending_sign_in",
        "protocol",
        "send",
        "send_many",
        "session",
        "session_id",
        "vip_bytes",
    )

    def __init__(self, frontend: OpenVPNFrontend, core: OpenVPNServerSession, protocol: str,
                 addr: tuple[str, int], send: Callable[[bytes], None]) -> None:
        self.frontend = frontend
        self.core = core
        self.protocol = protocol
        self.addr = addr
        self.send = send  # transmits one OpenVPN packet to this client
        self.send_many: Callable[[list[bytes]], None] = self._send_each  # adapters may do better
        self.encrypt = core.encrypt
        self.owner: int | None = None  # the data worker serving its data channel; None: this process
        self.session: Session | None = None
        self.vip_bytes: bytes | None = None
        self.closed = False
        self.session_id = new_session_id("openvpn")  # before sign-in: RADIUS sees it as Acct-Session-Id
        self.challenge: tuple[ev.AuthRequest, Challenge] | None = None
        self.pending_sign_in: str | None = None  # a browser sign-in id while one is outstanding

    def _send_each(self, packets: list[bytes]) -> None:
        for packet in packets:
            self.send(packet)

    @property
    def remote(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    @property
    def bytes_in(self) -> int:
        return self.core.bytes_in

    @property
    def bytes_out(self) -> int:
        return self.core.bytes_out

    @property
    def packets_in(self) -> int:
        return self.core.packets_in

    @property
    def packets_out(self) -> int:
        return self.core.packets_out

    def disconnect(self, message: str) -> None:
        """Tell the client (RESTART, HALT, AUTH_FAILED,…) and end the session."""
        self.core.disconnect(time.time(), message)
        self.frontend.pump(self)

    def abandon(self, reason: str) -> None:
        """End the session without a word to the client (its address belongs to someone else now)."""
        self.core.close(time.time(), reason)
        self.frontend.pump(self)


class PeerIds:
    """24-bit peer-ids and the table the data path looks them up in.

    Freed ids are reused oldest first, so a late packet from a finished session rarely meets a
    new session under its old id (and if it does, it fails authentication there)."""

    def __init__(self) -> None:
        self.table: dict[int, OpenVPNPeer] = {}
        self._next = 0
        self._free: deque[int] = deque()

    def allocate(self) -> int | None:
        if self._free:
            return self._free.popleft()
        if self._next > MAX_PEER_ID:
            return None
        self._next += 1
        return self._next - 1

    def release(self, peer_id: int) -> None:
        self.table.pop(peer_id, None)
        self._free.append(peer_id)


class OpenVPNFrontend:
    def __init__(self, gateway: Gateway, settings: SessionSettings) -> None:
        self.gw = gateway
        self.peer_ids = PeerIds()
        self.listener = OpenVPNListener(
            settings,
            gateway.tls_wrap,
            lambda: gateway.tls_context,
            self.peer_ids.allocate,
            gateway.config.openvpn.max_handshakes_per_second,
        )
        self.peers: set[OpenVPNPeer] = set()
        self._auth_tasks: set[asyncio.Task] = set()

    # ---------------------------------------------------------------- lifecycle of peers
    def add_peer(self, core: OpenVPNServerSession, protocol: str, addr: tuple[str, int],
                 send: Callable[[bytes], None]) -> OpenVPNPeer:
        peer = OpenVPNPeer(self, core, protocol, addr, send)
        self.peer_ids.table[core.peer_id] = peer
        self.peers.add(peer)
        return peer

    def pump(self, peer: OpenVPNPeer) -> None:
        """Deliver what the core produced: packets out, events handled, timer re-armed."""
        core = peer.core
        while (event := core.next_event()) is not None:
            self._handle_event(peer, event)
        for datagram in core.datagrams_to_send():
            peer.send(datagram)
        self.gw.timers.schedule(peer, core.timer())
        if core.closed and not peer.closed:
            self._forget(peer)

    def on_timer(self, peer: OpenVPNPeer, now: float) -> None:
        peer.core.handle_timer(now)
        self.pump(peer)

    def _forget(self, peer: OpenVPNPeer) -> None:
        peer.closed = True
        if peer.pending_sign_in is not None:
            self.gw.signins.cancel(peer.pending_sign_in)
        self.gw.timers.cancel(peer)
        self.peers.discard(peer)
        if peer.owner is not None:
            self.gw.workers.release(peer)
        self.peer_ids.release(peer.core.peer_id)
        self.gw.transports_forget(peer)
        if peer.session is not None:
            self.gw.end_session(peer.session, peer.vip_bytes)

    # ---------------------------------------------------------------- events
    def _handle_event(self, peer: OpenVPNPeer, event: ev.Event) -> None:
        sid = peer.session.id if peer.session else None
        if isinstance(event, ev.AuthRequest):
            self._authenticate(peer, event)
        elif isinstance(event, ev.ChallengeResponse):
            self._answer(peer, event)
        elif isinstance(event, ev.KeepaliveDue):
            self.gw.workers.ping(peer)
        elif isinstance(event, ev.DataKeysChanged):
            if peer.owner is not None:
                self.gw.workers.keys_changed(peer)
        elif isinstance(event, ev.Established):
            workers = self.gw.workers
            if workers is not None and workers.can_serve(peer):
                workers.hand_over(peer)
            session = peer.session
            if session is not None:  # one line per session: the data channel is up, and where
                log("session.up", session=sid, identity=session.identity, protocol=session.protocol,
                    virtual_ip=str(session.virtual_ip), remote=peer.remote, auth=session.auth_method,
                    group=session.policy_group, tls=event.tls_version, cipher=event.cipher, worker=peer.owner or 0)
        elif isinstance(event, ev.RenegotiationStarted):
            log("openvpn.renegotiation", session=sid, key_id=event.key_id, by_client=event.by_client)
        elif isinstance(event, ev.Renegotiated):
            log("openvpn.renegotiated", session=sid, key_id=event.key_id)
        elif isinstance(event, ev.HandshakeFailed):
            warn("openvpn.handshake_failed", remote=peer.remote, session=sid, key_id=event.key_id, reason=event.reason)
        elif isinstance(event, ev.AuthFailed):
            pass  # logged where the decision was made
        elif isinstance(event, ev.ClientExit):
            log("openvpn.client_exit", logging.DEBUG, session=sid, remote=peer.remote, reason=event.reason)
            if peer.session is not None:
                peer.session.terminate_cause = "User-Request"
        elif isinstance(event, ev.PacketDropped):
            self.gw.drops.drop(event.reason, remote=peer.remote)
        elif isinstance(event, ev.SessionClosed):
            log("openvpn.closed", session=sid, remote=peer.remote, reason=event.reason)
        elif isinstance(event, ev.ControlMessage):
            log("openvpn.control_message", session=sid, text=event.text[:100])

    def _authenticate(self, peer: OpenVPNPeer, event: ev.AuthRequest, answer: str | None = None,
                      challenge: Challenge | None = None) -> None:
        """Decide at once when no RADIUS round trip is needed (certificates, tokens), else in a task."""
        creds = Credentials(
            protocol=peer.protocol,
            remote=peer.remote,
            session_id=peer.session_id,
            peer_chain=event.peer_chain,  # TLS has verified it: a failed chain never gets this far
            username=event.username,
            password=answer if challenge is not None else event.password,
            challenge_state=challenge.state if challenge is not None else None,
        )
        auth = self.gw.auth
        try:
            if auth.wants_browser(creds):
                self._web_sign_in(peer, event)
                return
            result = auth.authenticate_at_once(creds)
            if result is not None:
                self._conclude(peer, event, result)
                return
        except Exception as exc:  # noqa: BLE001 (a bug in one sign-in must not reach the packet loop)
            self._internal_error(peer, event.key_id, exc)
            return
        wait = auth.may_wait(creds)
        if wait:  # RADIUS may hold the request for a push-MFA approval: the client must not give up
            peer.core.pending(event.key_id, time.time(), wait + PENDING_MARGIN)
            self.pump(peer)
        self._spawn(peer, event.key_id, self._authenticate_remotely(peer, event, creds))

    async def _authenticate_remotely(self, peer: OpenVPNPeer, event: ev.AuthRequest, creds: Credentials) -> None:
        result = await self.gw.auth.authenticate(creds)
        if not peer.closed:
            self._conclude(peer, event, result)

    def _conclude(self, peer: OpenVPNPeer, event: ev.AuthRequest, result: AuthResult) -> None:
        now = time.time()
        if result.challenge is not None and event.username is not None:
            self._challenge(peer, event, result.challenge, now)
            return
        self._decide(peer, event, result, now)

    def _decide(self, peer: OpenVPNPeer, event: ev.AuthRequest, result: AuthResult, now: float) -> None:
        """Apply an authentication outcome to the key state waiting for it."""
        auth = self.gw.auth
        if not result.ok:
            warn("auth.refused", protocol=peer.protocol, remote=peer.remote, identity=result.identity,
                 method=result.method, reason=result.reason, renegotiation=event.renegotiation)
            peer.core.deny(event.key_id, result.reason, now)
            self.pump(peer)
            return
        if event.renegotiation and peer.session is not None:
            if result.identity != peer.session.identity:
                peer.core.deny(event.key_id, "identity changed on renegotiation", now)
                warn("auth.refused", session=peer.session.id, reason="identity changed on renegotiation")
            else:
                peer.core.authorize(event.key_id, now=now)
            self.pump(peer)
            return
        if result.token_id is not None:
            # the same sign-in reconnecting (new port, network change): its old session is stale
            for old in self.gw.registry.with_token(result.token_id):
                log("session.replaced", session=old.id, by=peer.session_id, identity=old.identity)
                auth.revoke_token(old.token_id)  # a fresh token is pushed below
                old.tunnel.abandon("replaced by a reconnect of the same sign-in")
        group = self.gw.policy.select(result)
        address, refusal = self.gw.lease_address(group, result)
        if address is None:
            peer.core.deny(event.key_id, refusal, now)
            self.pump(peer)
            return
        session = Session(
            protocol=peer.protocol,
            identity=result.identity,
            auth_method=result.method,
            remote=peer.remote,
            tunnel=peer,
            virtual_ip=address,
            policy_group=group.name,
            cert_thumbprint=result.cert_thumbprint,
            id=peer.session_id,
            radius_class=result.radius_class,
            certificate_chain=event.peer_chain if result.cert_thumbprint else [],
        )
        peer.session = session
        peer.vip_bytes = address.packed
        extra_push = []
        if result.method in ("radius", "oidc", "certificate+radius"):
            # renegotiations and reconnects present this instead of asking RADIUS / the browser again
            token, session.token_id = auth.issue_token(result, now)
            extra_push.append(f"auth-token {token}")
            extra_push.append(f"auth-token-user {base64.b64encode(result.identity.encode()).decode()}")
        pool = self.gw.policy.group_of_address(address).pool  # a static address may sit in another group's pool
        network = ipaddress.ip_network(f"{address}/{pool.netmask_for(address)}", strict=False)
        peer.core.authorize(
            event.key_id,
            ClientNetworkConfig(
                address=address,
                network=network,
                gateway=network.network_address + 1,
                routes=group.routes,
                dns_servers=group.dns_servers,
            ),
            extra_push=extra_push,
            now=now,
        )
        self.gw.start_session(session, peer, result)
        self.pump(peer)

    def _web_sign_in(self, peer: OpenVPNPeer, event: ev.AuthRequest) -> None:
        """OIDC: send the client a short one-time URL on our HTTPS endpoint and wait for the browser."""
        now = time.time()
        if "webauth" not in peer.core.sso_methods and "openurl" not in peer.core.sso_methods:
            warn("auth.refused", remote=peer.remote, method="oidc", reason="client cannot do browser sign-in")
            peer.core.deny(event.key_id, "this VPN signs in through a web browser: use a client with WEB_AUTH "
                           "support (OpenVPN Connect, openvpn-gui) or a profile from 'p2sgw profile'", now)
            self.pump(peer)
            return
        timeout = self.gw.config.oidc.sign_in_timeout

        def done(result: AuthResult) -> None:
            if peer.closed:
                return
            if peer.core.keys[event.key_id] is None:
                return
            self._decide(peer, event, result, time.time())

        pending_id = self.gw.signins.register(f"{peer.protocol} from {peer.remote}", now + timeout, done)
        peer.pending_sign_in = pending_id
        url = f"{self.gw.config.web_base_url()}/a/{pending_id}"
        log("auth.web_sign_in", session=peer.session_id, remote=peer.remote, url_length=len(url))
        peer.core.pending(event.key_id, now, timeout + PENDING_MARGIN, web_auth_url=url)  # the broker times out first
        self.pump(peer)

    def _challenge(self, peer: OpenVPNPeer, event: ev.AuthRequest, challenge: Challenge, now: float) -> None:
        """An Access-Challenge (OTP prompt): CR_TEXT for clients that can answer in-band, else CRV1."""
        log("auth.challenge", session=peer.session_id, identity=event.username, remote=peer.remote)
        if "crtext" in peer.core.sso_methods:
            peer.challenge = (event, challenge)
            peer.core.pending(event.key_id, now, CHALLENGE_TIMEOUT, challenge.text, challenge.echo)
        else:
            state_id = self.gw.auth.remember_challenge(event.username or "", challenge, now)
            user = base64.b64encode((event.username or "").encode()).decode()
            text = challenge.text.replace(",", " ")
            peer.core.deny(event.key_id, f"CRV1:{'R,E' if challenge.echo else 'R'}:{state_id}:{user}:{text}", now)
        self.pump(peer)

    def _answer(self, peer: OpenVPNPeer, event: ev.ChallengeResponse) -> None:
        if peer.challenge is None or peer.challenge[0].key_id != event.key_id:
            warn("auth.unexpected_challenge_response", session=peer.session_id, remote=peer.remote)
            return
        request, challenge = peer.challenge
        peer.challenge = None
        self._authenticate(peer, request, event.response, challenge)

    def _spawn(self, peer: OpenVPNPeer, key_id: int, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._auth_tasks.add(task)

        def done(task: asyncio.Task) -> None:
            self._auth_tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self._internal_error(peer, key_id, task.exception())

        task.add_done_callback(done)

    def _internal_error(self, peer: OpenVPNPeer, key_id: int, exc: BaseException) -> None:
        error("auth.internal_error", session=peer.session_id, error=f"{type(exc).__name__}: {exc}")
        if not peer.closed:
            peer.core.deny(key_id, "internal error during sign-in", time.time())
            self.pump(peer)

    def shutdown(self, message: str = "RESTART") -> None:
        for peer in list(self.peers):
            peer.disconnect(message)
