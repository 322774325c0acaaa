"""Sans-I/O RFC 5176 server side: Disconnect-Request and CoA-Request from the RADIUS side.

The gateway is the *server* here (UDP 3799). `parse_request()` verifies a datagram: the Request
Authenticator is computed as for Accounting-Request (RFC 5176 §3.5), the Message-Authenticator
(zero vector) is required by default, and an Event-Timestamp outside `max_skew` of `now` makes the
request stale (RFC 5176 §3.5: silently discarded, like every request that fails verification).
`check_nas_identity()` NAKs a request meant for another NAS (Error-Cause 403); the owner finds the
session(s) and calls `build_response()` for the ACK or NAK. `ResponseCache` answers retransmitted
requests (same source, Identifier and authenticator) with the same reply without acting twice.
Which clients may ask at all is the adapter's check (by source address).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from .packet import (
    COA_ACK,
    COA_NAK,
    COA_REQUEST,
    DISCONNECT_ACK,
    DISCONNECT_NAK,
    DISCONNECT_REQUEST,
    ERROR_CAUSE,
    AttrList,
    PacketError,
    RadiusError,
    RadiusPacket,
    _items,
    encode_reply,
    verify_request,
)

# Error-Cause values (RFC 5176 §3.6)
RESIDUAL_CONTEXT_REMOVED = 201
INVALID_EAP_PACKET = 202
UNSUPPORTED_ATTRIBUTE = 401
MISSING_ATTRIBUTE = 402
NAS_IDENTIFICATION_MISMATCH = 403
INVALID_REQUEST = 404
UNSUPPORTED_SERVICE = 405
UNSUPPORTED_EXTENSION = 406
INVALID_ATTRIBUTE_VALUE = 407
ADMINISTRATIVELY_PROHIBITED = 501
REQUEST_NOT_ROUTABLE = 502
SESSION_CONTEXT_NOT_FOUND = 503
SESSION_CONTEXT_NOT_REMOVABLE = 504
OTHER_PROXY_PROCESSING_ERROR = 505
RESOURCES_UNAVAILABLE = 506
REQUEST_INITIATED = 507
MULTIPLE_SESSION_SELECTION_UNSUPPORTED = 508

DEFAULT_MAX_SKEW = 300.0  # seconds (RFC 5176 §3.5 recommends 300)

# NAS identification attributes (RFC 5176 §3): NAS-IP-Address, NAS-Identifier, NAS-IPv6-Address
_NAS_IP, _NAS_ID, _NAS_IPV6 = 4, 32, 95


class DynAuthError(RadiusError):
    """A request that must be silently discarded (bad authenticator, unsigned, stale, malformed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class DynAuthRequest:
    packet: RadiusPacket
    addr: tuple[str, int] | None = None

    @property
    def code(self) -> int:
        return self.packet.code

    @property
    def identifier(self) -> int:
        return self.packet.identifier

    @property
    def authenticator(self) -> bytes:
        return self.packet.authenticator

    @property
    def is_disconnect(self) -> bool:
        return self.packet.code == DISCONNECT_REQUEST

    @property
    def is_coa(self) -> bool:
        return self.packet.code == COA_REQUEST

    def _text(self, atype: int) -> str | None:
        values = self.packet.values(atype)
        return values[0].decode("utf-8", "replace") if values else None

    @property
    def user_name(self) -> str | None:
        return self._text(1)

    @property
    def acct_session_id(self) -> str | None:
        return self._text(44)

    @property
    def nas_identifier(self) -> str | None:
        return self._text(_NAS_ID)

    @property
    def calling_station_id(self) -> str | None:
        return self._text(31)

    def _ip(self, atype: int, size: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        values = self.packet.values(atype)
        if not values:
            return None
        if len(values[0]) != size:
            raise PacketError(f"address attribute {atype} of {len(values[0])} octets")
        return ipaddress.ip_address(values[0])

    @property
    def framed_ip(self) -> ipaddress.IPv4Address | None:
        return self._ip(8, 4)  # type: ignore[return-value]

    @property
    def nas_ip_address(self) -> ipaddress.IPv4Address | None:
        return self._ip(_NAS_IP, 4)  # type: ignore[return-value]

    @property
    def nas_ipv6_address(self) -> ipaddress.IPv6Address | None:
        return self._ip(_NAS_IPV6, 16)  # type: ignore[return-value]

    @property
    def event_timestamp(self) -> int | None:
        return self.packet.integer(55)

    @property
    def session_timeout(self) -> int | None:
        return self.packet.integer(27)

    @property
    def service_type(self) -> int | None:
        return self.packet.integer(6)

    @property
    def state(self) -> bytes | None:
        values = self.packet.values(24)
        return values[0] if values else None

    @property
    def identifies_session(self) -> bool:
        """Whether it names a session at all (RFC 5176 §3: session identification attributes)."""
        return any(self.packet.values(t) for t in (1, 8, 31, 44, 50, 168))


def parse_request(data: bytes, secret: bytes, now: float, *, addr: tuple[str, int] | None = None,
                  require_message_authenticator: bool = True, max_skew: float = DEFAULT_MAX_SKEW,
                  require_event_timestamp: bool = False) -> DynAuthRequest:
    """Verify and decode a Disconnect-Request or CoA-Request; DynAuthError if it must be dropped.

    `now` is the wall-clock time (UNIX seconds) to judge Event-Timestamp against."""
    if len(data) >= 1 and data[0] not in (DISCONNECT_REQUEST, COA_REQUEST):
        raise DynAuthError(f"not a Disconnect-Request or CoA-Request (code {data[0]})")
    reason = verify_request(data, secret, require_message_authenticator=require_message_authenticator)
    if reason is not None:
        raise DynAuthError(reason)
    try:
        packet = RadiusPacket.decode(data, secret=secret)
        request = DynAuthRequest(packet, addr)
        ts = request.event_timestamp
    except PacketError as exc:
        raise DynAuthError(f"malformed: {exc}") from None
    if ts is None:
        if require_event_timestamp:
            raise DynAuthError("missing Event-Timestamp")
    elif not math.isinf(max_skew) and abs(now - ts) > max_skew:
        raise DynAuthError(f"stale Event-Timestamp ({now - ts:+.0f} s off)")
    return request


def check_nas_identity(request: DynAuthRequest, nas_identifier: str | None,
                       nas_ip_addresses: Iterable[str] = ()) -> int | None:
    """NAS-Identification-Mismatch (403) if the request names another NAS, else None."""
    try:
        ident = request.nas_identifier
        ips = [ip for ip in (request.nas_ip_address, request.nas_ipv6_address) if ip is not None]
    except PacketError:
        return INVALID_ATTRIBUTE_VALUE
    if ident is not None and nas_identifier is not None and ident != nas_identifier:
        return NAS_IDENTIFICATION_MISMATCH
    ours = {ipaddress.ip_address(a) for a in nas_ip_addresses}
    if ips and ours and not any(ip in ours for ip in ips):
        return NAS_IDENTIFICATION_MISMATCH
    return None


def build_response(request: DynAuthRequest, ack: bool, secret: bytes,
                   error_cause: int | None = None, attributes: AttrList = (), *,
                   message_authenticator: bool = True) -> bytes:
    """Disconnect-ACK/NAK or CoA-ACK/NAK for `request` (Response Authenticator over the request's
    authenticator, RFC 5176 §3.5; Message-Authenticator first). A NAK without an error cause gets
    none; an ACK may carry Error-Cause 201 (Residual-Context-Removed) only."""
    if request.is_disconnect:
        code = DISCONNECT_ACK if ack else DISCONNECT_NAK
    elif request.is_coa:
        code = COA_ACK if ack else COA_NAK
    else:
        raise ValueError("not a Disconnect-Request or CoA-Request")
    attrs = list(_items(attributes))
    if error_cause is not None:
        attrs.append((ERROR_CAUSE, int(error_cause).to_bytes(4, "big")))
    # Proxy-State is echoed unchanged and in order (RFC 5176 §3.8 via RFC 2865 §5.33).
    attrs += [(33, v) for v in request.packet.values(33)]
    return encode_reply(code, request.identifier, request.authenticator, secret, attrs,
                        message_authenticator=message_authenticator)


class ResponseCache:
    """Replies to recent requests by (source, Identifier, authenticator), so a retransmitted
    request gets the same answer and is not acted on twice. `None` marks one still in progress."""

    def __init__(self, lifetime: float = 30.0, limit: int = 4096) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._entries: OrderedDict[tuple, tuple[float, bytes | None]] = OrderedDict()

    @staticmethod
    def key(addr: tuple[str, int], data: bytes) -> tuple:
        return (addr[0], addr[1], data[1], bytes(data[4:20])) if len(data) >= 20 else (addr, data)

    def lookup(self, key: tuple, now: float) -> tuple[bool, bytes | None]:
        """(seen, reply): seen and reply None = still being handled."""
        self._expire(now)
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        return True, entry[1]

    def begin(self, key: tuple, now: float) -> None:
        self._entries[key] = (now, None)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def finish(self, key: tuple, reply: bytes | None, now: float) -> None:
        if reply is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = (now, reply)
            self._entries.move_to_end(key)

    def _expire(self, now: float) -> None:
        while self._entries:
            (when, _) = next(iter(self._entries.values()))
            if now - when <= self.lifetime:
                break
            self._entries.popitem(last=False)
