"""Wires the gateway together: config, PKI, store, address pool, auth, TUN, listeners, control socket.

This is the control process. UDP sessions' data channels are served by data-plane worker
processes (dataplane/, one per core by default), each with its own SO_REUSEPORT socket and TUN
queue; TCP sessions and P_DATA_V1 clients are served here (docs/dataplane.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from .accounting import Accounting
from .auth.base import AuthResult
from .auth.certificate import CertificateAuthenticator
from .auth.oidc import OidcProvider
from .auth.radius import RadiusAuthenticator
from .auth.service import AuthService
from .auth.tokens import AuthTokens
from .config import CONFIG_NAME, GatewayConfig, load_config
from .control import start_control_server
from .dataplane.path import deliver, read_datagram_batch, read_tun_batch, write_tun
from .dataplane.steering import reuseport_group
from .dataplane.supervisor import MAIN, DataWorkers, default_worker_count
from .frontends.openvpn import OpenVPNFrontend, OpenVPNPeer
from .io.openvpn_tcp import OpenVPNTcpConnection
from .io.openvpn_udp import OpenVPNUdpEndpoint
from .io.radius import AsyncRadiusClient, DynamicAuthorizationServer
from .io.runtime import new_event_loop, settle_gc
from .io.tcp_listener import SharedTcpListener
from .io.timers import TimerHeap
from .io.tun import TunDevice, ip_forwarding_enabled
from .logs import DropCounter, log, setup_logging, warn
from .openvpn.session import SessionSettings
from .openvpn.static_key import parse_static_key
from .openvpn.tls import build_server_context
from .openvpn.tls_wrap import TlsAuth, TlsCrypt
from .pki import Pki, load_pem_certificate
from .policy import GroupPolicy, PolicyGroups
from .radius import dynauth
from .sessions import Session, SessionRegistry
from .store import Store
from .web.app import WebEndpoint
from .web.signin import SignInBroker

CONFIG_POLL_INTERVAL = 1.0
LEASE_FLUSH_INTERVAL = 1.0  # seconds between writes of queued sticky-lease changes


class Gateway:
    def __init__(self, state_dir: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.state_dir = state_dir
        self.loop = loop
        self.config: GatewayConfig = load_config(state_dir)
        self._config_mtime = self._mtime()
        self.pki = Pki(state_dir)
        self.store = Store.for_state_dir(state_dir, self.config)
        self.policy = PolicyGroups(self.config, self.store)
        self.registry = SessionRegistry()
        self.drops = DropCounter()
        self.timers = TimerHeap(loop, self._on_timer)
        self.cert_auth = CertificateAuthenticator(self.config.revoked_thumbprints())
        radius = self.config.radius
        self.radius_client = AsyncRadiusClient(radius) if radius.servers else None
        self.radius = (
            RadiusAuthenticator(radius, self.radius_client)
            if self.radius_client is not None and "radius" in self.config.vpn_auth_types else None
        )
        self.accounting = (
            Accounting(radius, self.radius_client, loop) if self.radius_client is not None and radius.accounting else None
        )
        self.dynauth: DynamicAuthorizationServer | None = None
        self.auth = AuthService(self.config, self.cert_auth, radius=self.radius, tokens=self._auth_tokens())
        self._session_timers: dict[str, asyncio.TimerHandle] = {}
        key2 = parse_static_key(self.pki.tls_crypt_key_path.read_text())
        ovpn = self.config.openvpn
        self.tls_wrap = TlsCrypt(key2) if ovpn.tls_wrap == "tls-crypt" else TlsAuth(key2)
        self.tls_context = self._build_tls_context()
        self.routes: dict[bytes, OpenVPNPeer] = {}  # virtual IP (packed) -> peer
        self._tcp: dict[OpenVPNPeer, OpenVPNTcpConnection] = {}
        self.tun: TunDevice | None = None
        self.udp: OpenVPNUdpEndpoint | None = None
        self.workers: DataWorkers | None = None
        self.worker_count = self._worker_count()
        self.tcp_listeners: list[SharedTcpListener] = []
        self.signins = SignInBroker()
        self.oidc = OidcProvider(self.config.oidc, self.config.oidc_redirect_uri()) \
            if "oidc" in self.config.vpn_auth_types else None
        if self.oidc is not None:
            self.signins.on_cancel.append(self.oidc.pending.discard)
        self.web = WebEndpoint(self.signins, self.oidc)
        self._https_ssl: ssl.SSLContext | None = None
        self.control_server: asyncio.AbstractServer | None = None
        self.frontend = OpenVPNFrontend(
            self,
            SessionSettings(
                ciphers=tuple(ovpn.ciphers),
                reneg_sec=ovpn.reneg_sec,
                ping=ovpn.keepalive_interval,
                ping_restart=ovpn.keepalive_timeout,
                hand_window=ovpn.hand_window,
                tls_timeout=ovpn.tls_timeout,
                transition_window=ovpn.transition_window,
                tun_mtu=ovpn.tun_mtu,
            ),
        )
        self._stopping = asyncio.Event()
        self.accepting = True

    # ---------------------------------------------------------------- set-up
    def _mtime(self) -> float:
        try:
            return (self.state_dir / CONFIG_NAME).stat().st_mtime
        except OSError:
            return 0.0

    def _auth_tokens(self) -> AuthTokens:
        """The token key is kept in the state dir, so tokens survive a gateway restart."""
        path = self.pki.dir / "auth-token.key"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_bytes(os.urandom(32))
        return AuthTokens(path.read_bytes(), self.config.openvpn.auth_token_lifetime)

    def _https_context(self) -> ssl.SSLContext:
        """TLS for the web endpoint: an operator-provided certificate (web.certificate_file) or the
        gateway's server certificate."""
        if self._https_ssl is None:
            web = self.config.web
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if web.certificate_file:
                ctx.load_cert_chain(web.certificate_file, web.key_file or None)
            else:
                chain = self.state_dir / "pki" / "server-chain.pem"
                chain.write_text(self.pki.server_cert_path.read_text() + self.pki.ca_pem())
                ctx.load_cert_chain(chain, self.pki.server_key_path)
            ctx.set_alpn_protocols(["http/1.1"])
            self._https_ssl = ctx
        return self._https_ssl

    def _trusted_roots(self) -> list[x509.Certificate]:
        roots = [self.pki.ca_certificate()]
        roots += [load_pem_certificate(r.public_cert_data) for r in self.config.vpn_client_root_certificates]
        return roots

    def _build_tls_context(self):
        cert = x509.load_pem_x509_certificate(self.pki.server_cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.pki.server_key_path.read_bytes(), None)
        return build_server_context(cert, key, [self.pki.ca_certificate()], self._trusted_roots(),
                                    require_client_certificate=self.auth.requires_client_certificate())

    def _worker_count(self) -> int:
        ovpn = self.config.openvpn
        if not (ovpn.enabled and ovpn.udp_port):
            return 0  # workers serve UDP sessions only
        return default_worker_count() if self.config.data_workers < 0 else self.config.data_workers

    def open_tun(self) -> None:
        """Netlink set-up runs before the event loop starts (pyroute2 cannot run inside it)."""
        ovpn = self.config.openvpn
        gateway_ifaces = [
            ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}") for net in self.policy.pool_networks()
        ]
        self.tun = TunDevice(ovpn.tun_name, ovpn.tun_mtu, gateway_ifaces, queues=self.worker_count + 1)

    def close_tun(self) -> None:
        if self.tun is not None:
            self.tun.close()
            self.tun = None

    async def start(self) -> None:
        ovpn = self.config.openvpn
        assert self.tun is not None, "open_tun() first"
        self.loop.add_reader(self.tun.fds[0], self._tun_readable)
        if not ip_forwarding_enabled():
            warn("ip_forward.disabled", hint="sysctl -w net.ipv4.ip_forward=1 so tunnels reach the VNet")
        if ovpn.enabled and ovpn.udp_port:
            socks = reuseport_group(ovpn.listen, ovpn.udp_port, self.worker_count)
            self.udp = OpenVPNUdpEndpoint(self, self.frontend, socks[MAIN])
            log("listen", protocol="openvpn-udp", address=f"{ovpn.listen}:{ovpn.udp_port}",
                data_workers=self.worker_count)
            if self.worker_count:
                self.workers = DataWorkers(self.loop, self.worker_count, socks, self.tun.fds, self.drops,
                                           self.config.log_level, self._client_exited, self.udp.follow)
                self.workers.start()
                self.loop.add_reader(self.workers.forward_in.fileno(), self._forwarded)
        web = self.config.web
        if web.enabled:
            await self.web.start()
        https = self.web.protocol_factory() if web.enabled else None
        if ovpn.enabled and ovpn.tcp_port:
            shared = https if web.share_openvpn_tcp_port else None
            self.tcp_listeners.append(SharedTcpListener(
                self.loop, ovpn.listen, ovpn.tcp_port, lambda: OpenVPNTcpConnection(self, self.frontend),
                shared, self._https_context if shared else None, self.drops))
            log("listen", protocol="openvpn-tcp" + ("+https" if shared else ""),
                address=f"{ovpn.listen}:{ovpn.tcp_port}")
        if web.enabled and web.port:
            self.tcp_listeners.append(SharedTcpListener(
                self.loop, ovpn.listen, web.port, None, https, self._https_context, self.drops))
            log("listen", protocol="https", address=f"{ovpn.listen}:{web.port}")
        if self.config.radius.dynamic_authorization.enabled:
            self.dynauth = DynamicAuthorizationServer(self.config.radius, self._dynamic_authorization)
            await self.dynauth.start()
        if self.accounting is not None:
            self.accounting.accounting_on()
        self.control_server = await start_control_server(self.state_dir / "control.sock", self.handle_control)
        self._watcher = self.loop.create_task(self._watch_config())
        self._lease_timer = self.loop.call_later(LEASE_FLUSH_INTERVAL, self._flush_leases)
        log("gateway.ready", public_address=self.config.public_address,
            pools=",".join(self.config.vpn_client_address_pool), tun=ovpn.tun_name)

    def _flush_leases(self, again: bool = True) -> None:
        """Sticky-lease changes are written behind (addressing.py): one transaction a second at most."""
        try:
            self.policy.flush_leases()
        except Exception as exc:  # noqa: BLE001 (the database may be away: keep them queued, retry)
            warn("store.lease_write_failed", error=f"{type(exc).__name__}: {exc}")
        if again:
            self._lease_timer = self.loop.call_later(LEASE_FLUSH_INTERVAL, self._flush_leases)

    # ---------------------------------------------------------------- data path
    def tun_write(self, packets: list[bytes]) -> None:
        write_tun(self._tun_fd, packets, self.drops)

    def _tun_readable(self) -> None:
        """Drain this process's TUN queue: packets for sessions served here are encrypted and sent,
        those of a worker's sessions forwarded to it."""
        deliver(read_tun_batch(self._tun_fd), self.routes, self.workers.forward if self.workers else None)

    def _forwarded(self) -> None:
        """Packets a worker's TUN queue received for sessions served here (TCP, P_DATA_V1)."""
        assert self.workers is not None
        deliver(read_datagram_batch(self.workers.forward_in), self.routes, None)

    def _client_exited(self, peer: OpenVPNPeer) -> None:
        peer.core.client_exited()
        self.frontend.pump(peer)

    @property
    def _tun_fd(self) -> int:
        assert self.tun is not None
        return self.tun.fds[0]

    # ---------------------------------------------------------------- sessions
    def lease_address(self, group: GroupPolicy, result: AuthResult) -> tuple[ipaddress.IPv4Address | None, str]:
        """The user's address: a static one from the backend (Framed-IP-Address) or a sticky lease
        from the group's pool. Returns (None, reason) when there is none to give."""
        if result.framed_ip is not None:
            owner = self.policy.group_of_address(result.framed_ip)
            if owner is None or not owner.pool.claim(result.framed_ip):
                warn("address.static_unavailable", identity=result.identity, address=str(result.framed_ip),
                     reason="outside every pool" if owner is None else "in use")
                return None, f"static address {result.framed_ip} is not available"
            return result.framed_ip, ""
        address = group.pool.lease(result.identity)
        if address is None:
            warn("address.pool_exhausted", identity=result.identity, group=group.name,
                 pools=",".join(str(n) for n in group.pool.networks))
            return None, "no free address in the client address pool"
        return address, ""

    def start_session(self, session: Session, peer: OpenVPNPeer, result: AuthResult) -> None:
        self.registry.add(session)
        assert session.virtual_ip is not None
        self.routes[session.virtual_ip.packed] = peer
        if self.workers is not None:
            self.workers.route(session.virtual_ip.packed, MAIN)  # until (unless) a worker takes it over
        if result.session_timeout:
            self._set_session_timeout(session, result.session_timeout)
        if self.accounting is not None:
            self.accounting.start(session, result.interim_interval)

    def _set_session_timeout(self, session: Session, seconds: int) -> None:
        old = self._session_timers.pop(session.id, None)
        if old is not None:
            old.cancel()
        elapsed = time.time() - session.connected_at.timestamp()
        self._session_timers[session.id] = self.loop.call_later(
            max(0.0, seconds - elapsed), self._session_timeout, session)

    def _session_timeout(self, session: Session) -> None:
        """Session-Timeout (RADIUS reply or CoA): the session ends and its token with it, so the
        client's automatic reconnect has to sign in for real again."""
        log("session.timeout", session=session.id, identity=session.identity)
        self.auth.revoke_token(session.token_id)
        self.end_by_gateway(session, "Session-Timeout", "RESTART")

    def end_by_gateway(self, session: Session, cause: str, message: str) -> None:
        """End a session for a reason of ours (the RADIUS terminate cause) and tell its client."""
        if cause == "Admin-Reset":
            self.auth.revoke_token(session.token_id)  # an operator's "go" is not undone by a reconnect
        session.terminate_cause = cause
        session.tunnel.disconnect(message)

    def end_session(self, session: Session, vip_bytes: bytes | None) -> None:
        self.registry.remove(session)
        if vip_bytes is not None and self.routes.get(vip_bytes) is session.tunnel:
            del self.routes[vip_bytes]
            if self.workers is not None:
                self.workers.unroute(vip_bytes)
        timer = self._session_timers.pop(session.id, None)
        if timer is not None:
            timer.cancel()
        if session.virtual_ip is not None:
            group = self.policy.group_of_address(session.virtual_ip)
            if group is not None:
                group.pool.release(session.virtual_ip)
        if self.accounting is not None:
            self.accounting.stop(session, session.terminate_cause)
        log("session.down", session=session.id, identity=session.identity, virtual_ip=str(session.virtual_ip),
            bytes_in=session.tunnel.bytes_in, bytes_out=session.tunnel.bytes_out,
            duration_s=int(time.time() - session.connected_at.timestamp()))

    def transports_track(self, peer: OpenVPNPeer, conn: OpenVPNTcpConnection) -> None:
        self._tcp[peer] = conn

    def transports_forget(self, peer: OpenVPNPeer) -> None:
        conn = self._tcp.pop(peer, None)
        if conn is not None:
            conn.close()
        if self.udp is not None:
            self.udp.forget(peer)

    def _on_timer(self, peer: OpenVPNPeer, now: float) -> None:
        self.frontend.on_timer(peer, now)
        self.drops.flush(now)

    # ---------------------------------------------------------------- management
    async def handle_control(self, request: dict) -> dict:
        op = request.get("op")
        if op == "sessions":
            return {"ok": True, "sessions": [s.as_dict() for s in self.registry]}
        if op == "disconnect":
            session = self.registry.get(str(request.get("id", "")))
            if session is None:
                return {"ok": False, "error": "no such session"}
            log("session.disconnect", session=session.id, identity=session.identity, by="operator")
            self.end_by_gateway(session, "Admin-Reset", "HALT")
            return {"ok": True}
        if op == "reload":
            self.reload_config()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def _watch_config(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(CONFIG_POLL_INTERVAL)
            if self._mtime() != self._config_mtime:
                self.reload_config()
            now = time.time()
            self.drops.flush(now)
            self.signins.expire(now)

    def reload_config(self) -> None:
        """Re-read p2sgw.toml: trusted roots and revocations apply at once, also to live sessions."""
        self._config_mtime = self._mtime()
        try:
            config = load_config(self.state_dir)
        except Exception as exc:  # a half-edited file must not take the gateway down
            warn("config.reload_failed", error=str(exc))
            return
        self.config = config
        self.cert_auth.revoked = config.revoked_thumbprints()
        try:
            self.tls_context = self._build_tls_context()
        except Exception as exc:
            warn("config.tls_context_failed", error=str(exc))
        log("config.reloaded", revoked=len(self.cert_auth.revoked), roots=len(config.vpn_client_root_certificates))
        roots = self._trusted_roots()
        for session in self.registry:
            if session.cert_thumbprint and session.cert_thumbprint in self.cert_auth.revoked:
                warn("session.revoked", session=session.id, identity=session.identity,
                     thumbprint=session.cert_thumbprint)
                self.end_by_gateway(session, "Admin-Reset", "AUTH_FAILED,certificate revoked")
            elif session.certificate_chain and not _issued_by_any(session.certificate_chain[-1], roots):
                warn("session.untrusted_root", session=session.id, identity=session.identity,
                     issuer=session.certificate_chain[-1].issuer.rfc4514_string())
                self.end_by_gateway(session, "Admin-Reset", "AUTH_FAILED,certificate authority no longer trusted")

    def _dynamic_authorization(self, request: dynauth.DynAuthRequest) -> tuple[bool, int | None]:
        """RFC 5176: end (Disconnect-Request) or change (CoA Session-Timeout) the matching sessions."""
        matches = [
            s for s in self.registry
            if (request.acct_session_id is None or s.id == request.acct_session_id)
            and (request.user_name is None or s.identity == request.user_name)
            and (request.framed_ip is None or s.virtual_ip == request.framed_ip)
        ]
        if request.acct_session_id is None and request.user_name is None and request.framed_ip is None:
            return False, dynauth.MISSING_ATTRIBUTE
        if not matches:
            log("radius.dynauth", op="disconnect" if request.is_disconnect else "coa", found=0,
                user=request.user_name, acct_session_id=request.acct_session_id)
            return False, dynauth.SESSION_CONTEXT_NOT_FOUND
        for session in matches:
            log("radius.dynauth", op="disconnect" if request.is_disconnect else "coa", session=session.id,
                identity=session.identity)
            if request.is_disconnect:
                self.end_by_gateway(session, "Admin-Reset", "HALT")
            elif request.session_timeout is not None:
                self._set_session_timeout(session, request.session_timeout)
            else:
                return False, dynauth.UNSUPPORTED_ATTRIBUTE
        return True, None

    async def run(self) -> None:
        await self.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        log("gateway.stopping", sessions=len(self.registry))
        self.accepting = False  # no new sessions while the current ones are told to go
        for listener in self.tcp_listeners:
            listener.close()
        for session in self.registry:
            session.terminate_cause = "NAS-Request"
        self.frontend.shutdown("RESTART")  # clients reconnect (to another node, or to us after restart)
        deadline = time.time() + 2.0
        while self.frontend.peers and time.time() < deadline:
            await asyncio.sleep(0.05)
        if self.workers is not None:
            await self.workers.stop()
            self.loop.remove_reader(self.workers.forward_in.fileno())
        if self.udp is not None:
            self.udp.close()
        if self.control_server is not None:
            self.control_server.close()
        if self.dynauth is not None:
            self.dynauth.close()
        if self.accounting is not None:
            await self.accounting.drain()
            await self.accounting.accounting_off()
        if self.radius_client is not None:
            self.radius_client.close()
        if self.config.web.enabled:
            await self.web.close()
        if self.oidc is not None:
            await self.oidc.aclose()
        (self.state_dir / "control.sock").unlink(missing_ok=True)
        if self.tun is not None:
            self.loop.remove_reader(self.tun.fds[0])
        self._watcher.cancel()
        self._lease_timer.cancel()
        self._flush_leases(again=False)
        self.timers.close()
        self.store.close()
        log("gateway.stopped")


def _issued_by_any(cert: x509.Certificate, roots: list[x509.Certificate]) -> bool:
    """Whether `cert` (the top of a client's chain) is signed by one of the trusted roots, or is one."""
    for root in roots:
        if cert == root:
            return True
        if cert.issuer == root.subject:
            try:
                cert.verify_directly_issued_by(root)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
    return False


def run_gateway(state_dir: Path) -> int:
    config = load_config(state_dir)
    setup_logging(config.log_level)
    loop = new_event_loop()
    gateway = None
    try:
        gateway = Gateway(state_dir, loop)
        gateway.open_tun()
        settle_gc()
        loop.run_until_complete(gateway.run())
    except OSError as exc:
        warn("gateway.failed", error=str(exc))
        return 1
    finally:
        if gateway is not None:
            gateway.close_tun()
        loop.close()
    return 0
