"""Sans-I/O RADIUS client: servers in priority order, retransmission, failover, dead servers.

Bytes and time go in, datagrams and events come out (the aioquic shape)::

    handle = client.send_request(ACCESS_REQUEST, attrs, now)
    for data, addr in client.datagrams_to_send(): sock.sendto(data, addr)
    ... client.receive_datagram(data, addr, now) / client.handle_timer(now) at client.timer()
    while (event := client.next_event()) is not None: ...

Per request and server (RFC 5080 §2.2): the *identical* datagram (same Identifier, same Request
Authenticator) is retransmitted `retries` times, evenly spread over `timeout`, so a server holding
a push-MFA request recognises the duplicates; after `timeout` the next server is asked with a new
Identifier and, for Access-Request, a new Request Authenticator (User-Password hidden again, with
that server's secret). A server that answered nothing since the request was first sent to it is
marked dead for `dead_time`: later requests start at the next live server, and the dead one is
asked again once `dead_time` is over (or at once when every server is marked dead: then all are
tried in order rather than refusing without asking). Identifier spaces are per destination
(address, port); at most 256 requests can be outstanding per destination and socket.

Replies are verified before they complete anything: wrong source, unknown Identifier, wrong
Response Authenticator, missing/invalid Message-Authenticator, unexpected code or Proxy-State ->
`Dropped(reason, addr)` (counted in `drops`), and the request keeps waiting for the real answer.
"""

from __future__ import annotations

import math
import os
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .packet import (
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    CODE_NAMES,
    STATUS_SERVER,
    AttrList,
    RadiusReply,
    _items,
    encode_request,
    resolve,
    verify_reply,
)

if TYPE_CHECKING:
    from ..config import RadiusSettings

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Server:
    """One RADIUS server. `address` must be the IP literal replies come from (resolve names first)."""

    address: str
    port: int = 1812
    accounting_port: int = 1813
    secret: bytes = field(default=b"", repr=False)

    @property
    def name(self) -> str:
        return f"{self.address}:{self.port}"


# ---- events ---------------------------------------------------------------------------------------


class Event:
    __slots__ = ()


@dataclass(slots=True)
class Response(Event):
    """A verified reply completed request `handle`."""

    handle: int
    packet: RadiusReply
    server: str  # "address:port" the reply came from


@dataclass(slots=True)
class Failed(Event):
    """No server answered request `handle` (or it could not be sent at all)."""

    handle: int
    reason: str


@dataclass(slots=True)
class Dropped(Event):
    """A datagram that completed nothing (forged, unsigned, late, malformed)."""

    reason: str
    addr: Addr


@dataclass(slots=True)
class ServerDown(Event):
    server: str
    until: float
    reason: str


@dataclass(slots=True)
class ServerUp(Event):
    server: str


# ---- state --------------------------------------------------------------------------------------


class _ServerState:
    __slots__ = ("dead_until", "last_reply", "next_id", "server")

    def __init__(self, server: Server, first_id: int) -> None:
        self.server = server
        self.dead_until = -math.inf
        self.last_reply = -math.inf
        self.next_id = {server.port: first_id, server.accounting_port: first_id}

    def dead(self, now: float) -> bool:
        return self.dead_until > now


class _Request:
    __slots__ = (
        "accounting",
        "attributes",
        "authenticator",
        "candidates",
        "code",
        "created",
        "datagram",
        "delay_base",
        "dest",
        "failures",
        "first_sent",
        "give_up_at",
        "handle",
        "identifier",
        "idx",
        "next_send",
        "sends",
        "state",
        "try_dead",
    )

    def __init__(self, handle: int, code: int, attributes: list[tuple[Any, Any]], accounting: bool,
                 created: float, delay_base: int) -> None:
        self.handle = handle
        self.code = code
        self.attributes = attributes
        self.accounting = accounting
        self.created = created
        self.delay_base = delay_base
        self.candidates: list[_ServerState] = []
        self.idx = -1
        self.try_dead = False
        self.state: _ServerState | None = None
        self.dest: Addr = ("", 0)
        self.identifier = -1
        self.authenticator = b""
        self.datagram = b""
        self.first_sent = 0.0
        self.sends = 0
        self.next_send = math.inf
        self.give_up_at = math.inf
        self.failures: list[str] = []


class RadiusClient:
    def __init__(self, servers: Sequence[Server], *, timeout: float = 30.0, retries: int = 2,
                 dead_time: float = 60.0, nas_identifier: str | None = "p2sgw",
                 nas_ip_address: str | None = None, require_message_authenticator: bool = True,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if timeout <= 0 or retries < 0 or dead_time < 0:
            raise ValueError("timeout must be > 0, retries and dead_time >= 0")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.dead_time = float(dead_time)
        self.nas_identifier = nas_identifier
        self.nas_ip_address = nas_ip_address
        self.require_message_authenticator = require_message_authenticator
        self._random = random_bytes
        self._servers = [_ServerState(s, random_bytes(1)[0]) for s in servers]
        self._by_dest: dict[Addr, tuple[_ServerState, dict[int, _Request]]] = {}
        for st in self._servers:
            for port in (st.server.port, st.server.accounting_port):
                self._by_dest.setdefault((st.server.address, port), (st, {}))
        self._requests: dict[int, _Request] = {}
        self._next_handle = 1
        self._out: list[tuple[bytes, Addr]] = []
        self._events: deque[Event] = deque()
        self.drops: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: RadiusSettings, addresses: Mapping[str, str] | None = None,
                      **kwargs: Any) -> RadiusClient:
        """From the config model; `addresses` maps configured host names to resolved IPs."""
        addresses = addresses or {}
        servers = [Server(addresses.get(s.address, s.address), s.port, s.accounting_port,
                          (s.secret or settings.secret).encode("utf-8"))
                   for s in settings.servers]
        kwargs.setdefault("timeout", settings.timeout)
        kwargs.setdefault("retries", settings.retries)
        kwargs.setdefault("dead_time", settings.dead_time)
        kwargs.setdefault("nas_identifier", settings.nas_identifier or None)
        kwargs.setdefault("nas_ip_address", settings.nas_ip_address)
        return cls(servers, **kwargs)

    # ---- API -----------------------------------------------------------------------------------

    @property
    def servers(self) -> list[Server]:
        return [st.server for st in self._servers]

    def server_status(self, now: float) -> list[dict[str, Any]]:
        return [{"server": st.server.name, "dead": st.dead(now),
                 "dead_for": max(0.0, st.dead_until - now) if st.dead(now) else 0.0,
                 "outstanding": sum(len(self._by_dest[(st.server.address, p)][1])
                                    for p in {st.server.port, st.server.accounting_port})}
                for st in self._servers]

    def send_request(self, code: int, attributes: AttrList, now: float, *,
                     defaults: bool = True) -> int:
        """Queue a request; returns its handle. Access-Request and Status-Server go to the servers'
        auth port, Accounting-Request to their accounting port. With `defaults`
        NAS-Identifier/NAS-IP-Address (and for Access-Request Service-Type Framed-User and
        NAS-Port-Type Virtual) are added unless `attributes` has them. ValueError for attributes
        that cannot be encoded (nothing is queued then)."""
        if code not in (ACCESS_REQUEST, ACCOUNTING_REQUEST, STATUS_SERVER):
            raise ValueError(f"a RADIUS client does not send code {code}")
        attrs = list(_items(attributes))
        accounting = code == ACCOUNTING_REQUEST
        delay_base = 0
        if accounting:  # Acct-Delay-Time is ours to keep current (RFC 2866 §5.2)
            kept = []
            for key, value in attrs:
                if resolve(key)[0] == 41:
                    delay_base = (int.from_bytes(value, "big") if isinstance(value, bytes)
                                  else int(value))
                else:
                    kept.append((key, value))
            attrs = kept
        if defaults:
            attrs = self._with_defaults(code, attrs)
        handle = self._next_handle
        self._next_handle += 1
        if not self._servers:
            self._events.append(Failed(handle, "no RADIUS servers configured"))
            return handle
        req = _Request(handle, code, attrs, accounting, now, delay_base)
        alive = [st for st in self._servers if not st.dead(now)]
        req.try_dead = not alive  # every server marked dead: ask them all anyway, in order
        req.candidates = alive or list(self._servers)
        self._requests[handle] = req
        try:
            self._next_server(req, now, first=True)
        except ValueError:
            self._requests.pop(handle, None)
            raise
        return handle

    def cancel(self, handle: int) -> None:
        """Forget a request (its late answer will be dropped); no event."""
        req = self._requests.pop(handle, None)
        if req is not None:
            self._release(req)

    def receive_datagram(self, data: bytes, addr: tuple, now: float) -> None:
        addr = (addr[0], addr[1])
        entry = self._by_dest.get(addr)
        if entry is None:
            return self._drop("reply from an address that is not a RADIUS server", addr)
        st, pending = entry
        if len(data) < 20:
            return self._drop("malformed: shorter than a RADIUS header", addr)
        req = pending.get(data[1])
        if req is None:
            return self._drop("no request pending with this identifier", addr)
        reason = verify_reply(data, request_code=req.code, identifier=req.identifier,
                              request_authenticator=req.authenticator, secret=st.server.secret,
                              require_message_authenticator=self.require_message_authenticator)
        if reason is not None:
            return self._drop(reason, addr)
        reply = RadiusReply.decode(data, secret=st.server.secret,
                                   request_authenticator=req.authenticator)
        self._release(req)
        del self._requests[req.handle]
        st.last_reply = now
        if st.dead_until != -math.inf:
            st.dead_until = -math.inf
            self._events.append(ServerUp(st.server.name))
        self._events.append(Response(req.handle, reply, st.server.name))

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def timer(self) -> float | None:
        when = min((min(r.next_send, r.give_up_at) for r in self._requests.values()),
                   default=math.inf)
        return None if when == math.inf else when

    def handle_timer(self, now: float) -> None:
        for req in list(self._requests.values()):
            if req.give_up_at <= now:
                self._server_timed_out(req, now)
            elif req.next_send <= now:
                self._out.append((req.datagram, req.dest))  # identical bytes: same id + authenticator
                req.sends += 1
                req.next_send = (req.first_sent + req.sends * self._interval
                                 if req.sends <= self.retries else math.inf)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ---- internals -------------------------------------------------------------------------------

    @property
    def _interval(self) -> float:
        return self.timeout / (self.retries + 1)

    def _with_defaults(self, code: int, attrs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        present = {resolve(k)[0] for k, _ in attrs}
        extra: list[tuple[Any, Any]] = []
        if self.nas_identifier and 32 not in present:
            extra.append(("NAS-Identifier", self.nas_identifier))
        if self.nas_ip_address and 4 not in present:
            extra.append(("NAS-IP-Address", self.nas_ip_address))
        if code == ACCESS_REQUEST:
            if 6 not in present:
                extra.append(("Service-Type", "Framed-User"))
            if 61 not in present:
                extra.append(("NAS-Port-Type", "Virtual"))
        return attrs + extra

    def _drop(self, reason: str, addr: Addr) -> None:
        self.drops[reason.split(":", 1)[0]] += 1
        self._events.append(Dropped(reason, addr))

    def _release(self, req: _Request) -> None:
        if req.state is not None:
            pending = self._by_dest[req.dest][1]
            if pending.get(req.identifier) is req:
                del pending[req.identifier]
        req.state = None

    def _allocate(self, st: _ServerState, dest: Addr, avoid: int) -> int | None:
        """A free Identifier for dest; never `avoid` (the request's previous one) unless it is
        the only one left."""
        pending = self._by_dest[dest][1]
        port = dest[1]
        start = st.next_id[port]
        spare = None
        for i in range(256):
            ident = (start + i) & 0xFF
            if ident == avoid and ident not in pending:
                spare = ident
                continue
            if ident not in pending:
                st.next_id[port] = (ident + 1) & 0xFF
                return ident
        return spare

    def _next_server(self, req: _Request, now: float, first: bool = False) -> None:
        while True:
            req.idx += 1
            if req.idx >= len(req.candidates):
                self._requests.pop(req.handle, None)
                what = CODE_NAMES.get(req.code, str(req.code))
                self._events.append(Failed(req.handle, f"no RADIUS server answered the {what}: "
                                           + "; ".join(req.failures)))
                return
            st = req.candidates[req.idx]
            if not req.try_dead and st.dead(now):  # marked dead since this request started
                req.failures.append(f"{st.server.name} skipped (marked dead)")
                continue
            port = st.server.accounting_port if req.accounting else st.server.port
            dest = (st.server.address, port)
            ident = self._allocate(st, dest, req.identifier)
            if ident is None:
                req.failures.append(f"{st.server.name}: 256 requests outstanding")
                continue
            attrs = req.attributes
            if req.accounting:
                attrs = attrs + [("Acct-Delay-Time", req.delay_base + int(now - req.created))]
            authenticator = (self._random(16) if req.code in (ACCESS_REQUEST, STATUS_SERVER)
                             else None)
            try:
                datagram, authenticator = encode_request(req.code, ident, st.server.secret, attrs,
                                                         authenticator=authenticator)
            except ValueError as exc:
                if first:
                    raise
                req.failures.append(f"{st.server.name}: cannot encode: {exc}")
                continue
            req.state, req.dest, req.identifier = st, dest, ident
            req.authenticator, req.datagram = authenticator, datagram
            self._by_dest[dest][1][ident] = req
            req.first_sent = now
            req.sends = 1
            req.next_send = now + self._interval if self.retries else math.inf
            req.give_up_at = now + self.timeout
            self._out.append((datagram, dest))
            return

    def _server_timed_out(self, req: _Request, now: float) -> None:
        st = req.state
        assert st is not None
        self._release(req)
        req.failures.append(f"{st.server.name} did not answer ({req.sends} sends in "
                            f"{self.timeout:g} s)")
        if st.last_reply < req.first_sent and self.dead_time > 0:
            # Silent since this request was sent: dead. (A server that answered other requests
            # meanwhile is only slow on this one, e.g. a push-MFA approval still pending.)
            was_dead = st.dead(now)
            st.dead_until = max(st.dead_until, now + self.dead_time)
            if not was_dead:
                self._events.append(ServerDown(st.server.name, st.dead_until,
                                               f"no answer for {self.timeout:g} s"))
        req.next_send = req.give_up_at = math.inf
        self._next_server(req, now)
