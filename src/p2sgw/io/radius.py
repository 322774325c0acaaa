"""asyncio adapters for RADIUS: the client (auth + accounting) and the RFC 5176 listener.

`AsyncRadiusClient` owns one unconnected UDP socket (one per address family in use) and drives the
sans-I/O `p2sgw.radius.client.RadiusClient`: datagrams out with sendto per server, datagrams in to
the core, one loop timer at `core.timer()`. `request()` resolves with the verified reply or raises
`RadiusUnavailable(reason)` when no server answered. Host names in the config are resolved once,
at start (rebuild the client to re-resolve).

`DynamicAuthorizationServer` listens for Disconnect-Request/CoA-Request (UDP 3799), refuses sources
outside `allowed_clients` (default: the configured RADIUS servers), verifies with
`p2sgw.radius.dynauth`, answers retransmissions from a cache, and asks
`handler(request) -> (ack, error_cause)` (sync or async) what to answer.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self

from ..config import RadiusSettings
from ..logs import DropCounter, log, warn
from ..radius import dynauth
from ..radius.client import (
    Dropped,
    Failed,
    RadiusClient,
    Response,
    ServerDown,
    ServerUp,
)
from ..radius.mschap import ms_chap2_response_attribute
from ..radius.packet import (
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    CODE_NAMES,
    AttrList,
    RadiusError,
    RadiusReply,
    _items,
)

__all__ = ["AsyncRadiusClient", "DynamicAuthorizationServer", "RadiusReply", "RadiusUnavailable"]


class RadiusUnavailable(RadiusError):
    """No RADIUS server answered (or none is configured / resolvable); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _normalize_ip(text: str) -> str:
    return ipaddress.ip_address(text).compressed


async def _resolve(loop: asyncio.AbstractEventLoop, host: str) -> str | None:
    try:
        return _normalize_ip(host)
    except ValueError:
        pass
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        warn("radius.resolve_failed", host=host, error=str(exc))
        return None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # prefer IPv4, like most RADIUS deployments
    return _normalize_ip(infos[0][4][0]) if infos else None


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Any], None]) -> None:
        self._receive = receive

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._receive(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: the core's timeouts handle them
        pass


class AsyncRadiusClient:
    def __init__(self, settings: RadiusSettings, *, bind_address: str | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, **core_options: Any) -> None:
        """`core_options` go to RadiusClient (e.g. require_message_authenticator, timeout)."""
        self.settings = settings
        self.bind_address = bind_address
        self._loop = loop
        self._core_options = core_options
        self.core: RadiusClient | None = None
        self._transports: dict[int, asyncio.DatagramTransport] = {}
        self._futures: dict[int, asyncio.Future[RadiusReply]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False
        self.drops = DropCounter()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve the servers and open the socket(s); called by the first request if needed."""
        if self.core is not None:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        loop = self._loop = self._loop or asyncio.get_running_loop()
        addresses: dict[str, str] = {}
        for server in self.settings.servers:
            ip = await _resolve(loop, server.address)
            if ip is not None:
                addresses[server.address] = ip
        usable = self.settings.model_copy(update={
            "servers": [s for s in self.settings.servers if s.address in addresses]})
        core = RadiusClient.from_settings(usable, addresses, **self._core_options)
        families = {socket.AF_INET6 if ":" in s.address else socket.AF_INET for s in core.servers}
        for family in sorted(families):
            local = self.bind_address or ("::" if family == socket.AF_INET6 else "0.0.0.0")
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self._received), local_addr=(local, 0), family=family)
            self._transports[family] = transport
        self.core = core
        log("radius.client.started", servers=",".join(s.name for s in core.servers) or "none",
            timeout_s=core.timeout, retries=core.retries, dead_time_s=core.dead_time)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(RadiusUnavailable("RADIUS client closed"))
        self._futures.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def local_addresses(self) -> list[tuple]:
        return [t.get_extra_info("sockname") for t in self._transports.values()]

    # ---- requests --------------------------------------------------------------------------------

    async def request(self, code: int, attributes: AttrList = (), *,
                      defaults: bool = True) -> RadiusReply:
        """Send one request through the failover machinery; the verified reply, or
        RadiusUnavailable. ValueError for attributes that cannot be encoded."""
        if self._closed:
            raise RadiusUnavailable("RADIUS client closed")
        await self.start()
        assert self.core is not None and self._loop is not None
        handle = self.core.send_request(code, attributes, self._loop.time(), defaults=defaults)
        fut: asyncio.Future[RadiusReply] = self._loop.create_future()
        self._futures[handle] = fut
        self._pump()
        try:
            return await fut
        except asyncio.CancelledError:
            if self.core is not None:
                self.core.cancel(handle)
                self._futures.pop(handle, None)
                self._pump()
            raise

    async def pap(self, username: str, password: str | bytes, state: bytes | None = None,
                  extra: AttrList = ()) -> RadiusReply:
        """PAP Access-Request; `state` answers an Access-Challenge (the answer is the password)."""
        attrs: list = [("User-Name", username), ("User-Password", password)]
        if state is not None:
            attrs.append(("State", bytes(state)))
        return await self.request(ACCESS_REQUEST, attrs + list(_items(extra)))

    async def mschapv2(self, username: str, authenticator_challenge: bytes, peer_challenge: bytes,
                       nt_response: bytes, ident: int, extra: AttrList = ()) -> RadiusReply:
        """MS-CHAPv2 Access-Request (RFC 2548): MS-CHAP-Challenge + MS-CHAP2-Response. Check the
        reply with mschap.check_ms_chap2_success(reply.ms_chap2_success, ident, ...)."""
        if len(authenticator_challenge) != 16:
            raise ValueError("authenticator challenge must be 16 octets")
        attrs: list = [
            ("User-Name", username),
            ("MS-CHAP-Challenge", bytes(authenticator_challenge)),
            ("MS-CHAP2-Response", ms_chap2_response_attribute(ident, peer_challenge, nt_response)),
        ]
        return await self.request(ACCESS_REQUEST, attrs + list(_items(extra)))

    async def eap(self, username: str, eap_message: bytes, state: bytes | None = None,
                  extra: AttrList = ()) -> RadiusReply:
        """One EAP round trip (RFC 3579): EAP-Message (split into 253-octet pieces), State from the
        previous Access-Challenge, Message-Authenticator. reply.eap_message is the answer."""
        attrs: list = [("User-Name", username), ("EAP-Message", bytes(eap_message))]
        if state is not None:
            attrs.append(("State", bytes(state)))
        return await self.request(ACCESS_REQUEST, attrs + list(_items(extra)))

    async def accounting(self, status_type: int | str, attributes: AttrList = ()) -> RadiusReply:
        """Accounting-Request to the servers' accounting ports (same failover); `status_type` is
        1/"Start", 2/"Stop", 3/"Interim-Update", 7/"Accounting-On", 8/"Accounting-Off".
        Acct-Delay-Time is maintained by the core."""
        attrs: list = [("Acct-Status-Type", status_type)]
        return await self.request(ACCOUNTING_REQUEST, attrs + list(_items(attributes)))

    # ---- plumbing --------------------------------------------------------------------------------

    def _received(self, data: bytes, addr: Any) -> None:
        if self.core is None or self._loop is None:
            return
        self.core.receive_datagram(data, (addr[0], addr[1]), self._loop.time())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        if self.core is None or self._loop is None:
            return
        self.core.handle_timer(self._loop.time())
        self._pump()

    def _pump(self) -> None:
        core, loop = self.core, self._loop
        if core is None or loop is None or self._closed:
            return
        for data, addr in core.datagrams_to_send():
            family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            transport = self._transports.get(family)
            if transport is None:
                continue
            try:
                transport.sendto(data, addr)
            except OSError as exc:  # the core's timeout and failover take care of it
                self.drops.drop("radius send failed", server=f"{addr[0]}:{addr[1]}",
                                error=str(exc))
        while (event := core.next_event()) is not None:
            if isinstance(event, Response):
                fut = self._futures.pop(event.handle, None)
                if fut is not None and not fut.done():
                    fut.set_result(event.packet)
            elif isinstance(event, Failed):
                warn("radius.request.failed", reason=event.reason)
                fut = self._futures.pop(event.handle, None)
                if fut is not None and not fut.done():
                    fut.set_exception(RadiusUnavailable(event.reason))
            elif isinstance(event, Dropped):
                self.drops.drop(f"radius reply dropped: {event.reason.split(':', 1)[0]}",
                                source=f"{event.addr[0]}:{event.addr[1]}", detail=event.reason)
            elif isinstance(event, ServerDown):
                warn("radius.server.dead", server=event.server, reason=event.reason,
                     retry_in_s=round(event.until - loop.time(), 1))
            elif isinstance(event, ServerUp):
                log("radius.server.alive", server=event.server)
        when = core.timer()
        if self._timer is not None and when != self._timer_when:
            self._timer.cancel()
            self._timer = None
        if when is not None and self._timer is None:
            self._timer = loop.call_at(when, self._on_timer)
            self._timer_when = when


Handler = Callable[[dynauth.DynAuthRequest],
                   "tuple[bool, int | None] | Awaitable[tuple[bool, int | None]]"]


class DynamicAuthorizationServer:
    """RFC 5176 listener. `handler(request)` returns (ack, error_cause) or an awaitable of it;
    an exception in it NAKs with Resources-Unavailable (506)."""

    def __init__(self, settings: RadiusSettings, handler: Handler, *,
                 nas_identifier: str | None = None, nas_ip_addresses: Iterable[str] = (),
                 clock: Callable[[], float] = time.time, max_skew: float = dynauth.DEFAULT_MAX_SKEW,
                 require_message_authenticator: bool = True) -> None:
        self.settings = settings
        self.options = settings.dynamic_authorization
        self.handler = handler
        self.nas_identifier = nas_identifier if nas_identifier is not None else (
            settings.nas_identifier or None)
        ips = list(nas_ip_addresses)
        if not ips and settings.nas_ip_address:
            ips = [settings.nas_ip_address]
        self.nas_ip_addresses = ips
        self.clock = clock
        self.max_skew = max_skew
        self.require_message_authenticator = require_message_authenticator
        # Its own secret; empty: the RADIUS shared secret.
        self.secret = (self.options.secret or settings.secret).encode("utf-8")
        self.allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.cache = dynauth.ResponseCache()
        self.drops = DropCounter()
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        allowed = list(self.options.allowed_clients)
        if not allowed:
            for server in self.settings.servers:
                ip = await _resolve(loop, server.address)
                if ip is not None:
                    allowed.append(ip)
        self.allowed = [ipaddress.ip_network(a, strict=False) for a in allowed]
        family = socket.AF_INET6 if ":" in self.options.listen else socket.AF_INET
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._received), local_addr=(self.options.listen, self.options.port),
            family=family)
        log("radius.dynauth.listening", address=f"{self.options.listen}:{self.local_address[1]}",
            allowed=",".join(map(str, self.allowed)) or "none")

    @property
    def local_address(self) -> tuple:
        assert self._transport is not None
        return self._transport.get_extra_info("sockname")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for task in self._tasks:
            task.cancel()

    def _allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allowed if net.version == ip.version)

    def _received(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        if not self._allowed(addr[0]):
            self.drops.drop("dynauth: client not allowed", source=addr[0])
            return
        now = self.clock()
        key = self.cache.key(addr, data)
        seen, reply = self.cache.lookup(key, now)
        if seen:
            if reply is not None and self._transport is not None:
                self._transport.sendto(reply, addr)  # retransmission: same answer, no second action
            return
        try:
            request = dynauth.parse_request(
                data, self.secret, now, addr=addr, max_skew=self.max_skew,
                require_message_authenticator=self.require_message_authenticator)
        except dynauth.DynAuthError as exc:
            self.drops.drop(f"dynauth: {exc.reason.split(':', 1)[0]}", source=addr[0],
                            detail=exc.reason)
            return
        self.cache.begin(key, now)
        task = asyncio.ensure_future(self._answer(request, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: dynauth.DynAuthRequest, key: tuple) -> None:
        what = CODE_NAMES.get(request.code, str(request.code))
        cause = dynauth.check_nas_identity(request, self.nas_identifier, self.nas_ip_addresses)
        if cause is not None:
            ack, error_cause = False, cause
        else:
            try:
                result = self.handler(request)
                if inspect.isawaitable(result):
                    result = await result
                ack, error_cause = result
            except asyncio.CancelledError:
                self.cache.finish(key, None, self.clock())
                raise
            except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the listener
                warn("radius.dynauth.handler_failed", request=what, error=repr(exc))
                ack, error_cause = False, dynauth.RESOURCES_UNAVAILABLE
        reply = dynauth.build_response(request, ack, self.secret, error_cause)
        self.cache.finish(key, reply, self.clock())
        log("radius.dynauth.answered", request=what, source=request.addr[0] if request.addr else "",
            ack=ack, error_cause=error_cause or "", user=request.user_name or "",
            acct_session_id=request.acct_session_id or "")
        if self._transport is not None and request.addr is not None:
            self._transport.sendto(reply, request.addr)
