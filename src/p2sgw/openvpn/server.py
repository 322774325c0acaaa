"""The listener side of OpenVPN: first packets, session creation, session tables. Sans-I/O.

UDP: the first client reset is answered statelessly (HMAC cookie); a session exists only once
the client's next packet echoes the cookie from the same address. TCP: one session per
connection, created at the reset. Data packets find their session by peer-id (P_DATA_V2), so a
client whose address changes keeps its session once a packet from the new address authenticates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL

from .cookie import SessionCookie
from .packets import (
    P_ACK_V1,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_CLIENT_V3,
    P_CONTROL_V1,
    PacketError,
    opcode_of,
    parse_body,
    split_header,
)
from .session import (
    OpenVPNServerSession,
    SessionSettings,
    new_session_id,
    server_reset_packet,
)
from .tls_wrap import TlsWrap

Addr = tuple[str, int]
MAX_PEER_ID = 0xFFFFFE  # 0xFFFFFF means "no peer-id"


@dataclass(slots=True)
class Verdict:
    """Outcome of a packet from a peer without a session."""

    reply: bytes | None = None
    session: OpenVPNServerSession | None = None
    drop_reason: str | None = None


class TokenBucket:
    """Caps stateless replies per second so a reset flood cannot turn us into an amplifier."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst or rate
        self.tokens = self.capacity
        self.stamp = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class OpenVPNListener:
    def __init__(
        self,
        settings: SessionSettings,
        wrap: TlsWrap,
        tls_context: Callable[[], SSL.Context],
        allocate_peer_id: Callable[[], int | None],
        max_resets_per_second: float = 200,
    ) -> None:
        self.settings = settings
        self.wrap = wrap
        self.tls_context = tls_context
        self.allocate_peer_id = allocate_peer_id
        self.cookie = SessionCookie(int(settings.hand_window))
        self.reset_limiter = TokenBucket(max_resets_per_second)

    def _unwrap(self, data: bytes):
        opcode, key_id, sid = split_header(data)
        _, body = self.wrap.unwrap(data)
        return parse_body(opcode, key_id, sid, body)

    def _reset_reply(self, own_sid: bytes, client_sid: bytes, now: float) -> bytes:
        packet = server_reset_packet(own_sid, client_sid)
        return self.wrap.wrap(packet.header(), packet.body(), 1, int(now))

    def udp_packet(self, data: bytes, addr: Addr, now: float) -> Verdict:
        """A control packet from an address without a (matching) session."""
        if not data:
            return Verdict(drop_reason="empty datagram")
        opcode = opcode_of(data[0])
        if opcode == P_CONTROL_HARD_RESET_CLIENT_V3:
            return Verdict(drop_reason="tls-crypt-v2 reset (not configured)")
        if opcode not in (P_CONTROL_HARD_RESET_CLIENT_V2, P_ACK_V1, P_CONTROL_V1):
            return Verdict(drop_reason=f"opcode {opcode} from a peer without a session")
        try:
            packet = self._unwrap(data)
        except PacketError as exc:
            return Verdict(drop_reason=str(exc))
        if packet.key_id != 0:
            return Verdict(drop_reason="first packets must use key_id 0")
        if opcode == P_CONTROL_HARD_RESET_CLIENT_V2:
            if packet.packet_id != 0 or packet.acks:
                return Verdict(drop_reason="client reset with unexpected packet id or acks")
            if not self.reset_limiter.take(now):
                return Verdict(drop_reason="reset rate limit exceeded")
            own = self.cookie.make(addr, packet.session_id, now)
            return Verdict(reply=self._reset_reply(own, packet.session_id, now))
        # second packet: must echo a valid cookie and stay within the first ids
        if not packet.acks or packet.remote_session_id is None:
            return Verdict(drop_reason="second packet without ACK of our reset")
        if not self.cookie.verify(packet.remote_session_id, addr, packet.session_id, now):
            return Verdict(drop_reason="invalid or expired session cookie")
        if max(packet.acks) > 1 or (packet.packet_id is not None and packet.packet_id > 1):
            return Verdict(drop_reason="second packet with out-of-range packet ids")
        session = self._new_session(packet.remote_session_id, packet.session_id, now, tcp=False)
        if session is None:
            return Verdict(drop_reason="no free peer-id")
        session.receive_control(data, now)
        return Verdict(session=session)

    def tcp_first_packet(self, data: bytes, now: float) -> Verdict:
        """The first packet on a TCP connection: state is per connection, so no cookie."""
        if not data or opcode_of(data[0]) != P_CONTROL_HARD_RESET_CLIENT_V2:
            return Verdict(drop_reason="TCP connection does not start with an OpenVPN client reset")
        try:
            packet = self._unwrap(data)
        except PacketError as exc:
            return Verdict(drop_reason=str(exc))
        if packet.packet_id != 0 or packet.key_id != 0:
            return Verdict(drop_reason="client reset with unexpected packet id")
        own = new_session_id()
        session = self._new_session(own, packet.session_id, now, tcp=True)
        if session is None:
            return Verdict(drop_reason="no free peer-id")
        return Verdict(reply=self._reset_reply(own, packet.session_id, now), session=session)

    def _new_session(self, own: bytes, client: bytes, now: float, tcp: bool) -> OpenVPNServerSession | None:
        peer_id = self.allocate_peer_id()
        if peer_id is None:
            return None
        settings = self.settings
        if tcp != settings.tcp:
            settings = SessionSettings(**{**{f: getattr(settings, f) for f in settings.__slots__}, "tcp": tcp})
        return OpenVPNServerSession(settings, self.tls_context, self.wrap, own, client, peer_id, now)
