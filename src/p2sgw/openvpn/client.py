"""One OpenVPN session, CLIENT side, as a sans-I/O state machine (the mirror of session.py).

Used by the load generator (bench/loadgen.py) and the tests: it speaks the same wire protocol as
an openvpn 2.6 client over UDP (HARD_RESET_CLIENT_V2, tls-crypt or tls-auth, TLS through
pyOpenSSL memory BIOs, key-method 2 with peer-info, PUSH_REQUEST/PUSH_REPLY, TLS-EKM or legacy
PRF data keys, P_DATA_V2, keepalive pings, ping-restart, renegotiation).

Inputs: `receive(datagram, now)` (or `receive_control` / `decrypt`), `handle_timer(now)` and the
application's `encrypt()`, `renegotiate()`, `disconnect()`. Outputs: `datagrams_to_send()`,
`next_event()`, `timer()`. No sockets, no clock reads.

Keepalive works like the server's: on packet counters sampled by a tick every `ping` seconds, so
the data path never reads the clock. A ping goes out at a tick when nothing was sent since the
previous one; the session ends (`SessionClosed`, reason starting with "ping-restart") when
nothing arrived for `ping_restart` seconds.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL

from . import events as ev
from .data_channel import KEEPALIVE_PING, OCC_EXIT, OCC_MAGIC, DataKey, is_keepalive
from .keys import (
    EKM_LABEL,
    KEY_METHOD_2,
    PRE_MASTER_SIZE,
    RANDOM_SIZE,
    KeySource,
    _write_string,
)
from .packets import (
    DATA_OPCODES,
    MAX_ACKS_PIGGYBACK,
    MAX_ACKS_STANDALONE,
    P_ACK_V1,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_SERVER_V2,
    P_CONTROL_SOFT_RESET_V1,
    P_CONTROL_V1,
    ControlPacket,
    PacketError,
    parse_body,
    split_header,
)
from .reliable import ReliableReceiver, ReliableSender
from .replay import ReplayWindow
from .static_key import Key2
from .tls import TlsEndpoint, new_context, set_groups
from .tls_wrap import TlsWrap, WrapError

TLS_PAYLOAD_CHUNK = 1100  # same control-packet size as the server (openvpn's tls-mtu is 1250)
PUSH_REQUEST_INTERVAL = 5.0  # openvpn 2.6 repeats PUSH_REQUEST every 5 s until a reply arrives
TRANSITION_WINDOW = 60.0  # openvpn's --transition-window default: the old key still decrypts this long
DEFAULT_PING = 10
DEFAULT_PING_RESTART = 60

DEFAULT_PEER_INFO: dict[str, str] = {
    "IV_VER": "2.6.12",
    "IV_PLAT": "linux",
    "IV_PROTO": "990",  # DATA_V2, REQUEST_PUSH, TLS_KEY_EXPORT, AUTH_PENDING_KW, DNS_OPTION, CC_EXIT_NOTIFY, ...
    "IV_NCP": "2",
    "IV_CIPHERS": "AES-256-GCM",
    "IV_MTU": "1600",
    "IV_TCPNL": "1",
}
DEFAULT_OPTIONS = (
    "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,"
    "auth [null-digest],keysize 256,key-method 2,tls-client"
)


# ============================================================================ TLS, client side
def build_client_context(
    client_cert: x509.Certificate,
    client_key: PrivateKeyTypes,
    trusted_roots: Iterable[x509.Certificate],
    chain: Iterable[x509.Certificate] = (),
    tls_max: int | None = None,
    groups: str | None = None,
) -> SSL.Context:
    """TLS ≥ 1.2 client context presenting `client_cert`; the server's chain must lead to a trusted root.

    One context serves any number of sessions (the load generator shares one per process).
    `groups`: the key exchanges to offer (OpenSSL's default when None)."""
    ctx = new_context(SSL.TLS_CLIENT_METHOD, client_cert, client_key, chain, trusted_roots, SSL.VERIFY_PEER)
    if tls_max is not None:
        ctx.set_max_proto_version(tls_max)
    if groups is not None:
        set_groups(ctx, groups)
    return ctx


# ============================================================================ messages
def build_client_key_method_2(source: KeySource, options: str, username: str | None, password: str | None,
                              peer_info: dict[str, str]) -> bytes:
    """ovpn26 key_method_2_write, client side: randoms, options, credentials (empty = none), peer-info."""
    info = "".join(f"{k}={v}\n" for k, v in peer_info.items())
    return b"".join([
        b"\0\0\0\0",
        bytes([KEY_METHOD_2]),
        source.client_pre_master,
        source.client_random1,
        source.client_random2,
        _write_string(options),
        _write_string(username),
        _write_string(password),
        _write_string(info or None),
    ])


@dataclass(slots=True)
class ServerKeyMethod2:
    random1: bytes
    random2: bytes
    options: str
    length: int


def parse_server_key_method_2(data: bytes) -> ServerKeyMethod2 | None:
    """The server's key-method-2 message (randoms + options + 3 strings); None while incomplete."""
    fixed = 4 + 1 + 2 * RANDOM_SIZE
    if len(data) < fixed:
        return None
    if data[:4] != b"\0\0\0\0":
        raise PacketError("server key-method-2 message does not start with 4 zero bytes")
    if data[4] & 0x0F != KEY_METHOD_2:
        raise PacketError(f"server uses unsupported key method {data[4] & 0x0F}")
    pos = fixed
    strings: list[bytes] = []
    for _ in range(4):  # options, username, password, peer-info (the last three empty from a server)
        if len(data) < pos + 2:
            return None
        (n,) = struct.unpack_from("!H", data, pos)
        if len(data) < pos + 2 + n:
            return None
        strings.append(bytes(data[pos + 2 : pos + 2 + n]))
        pos += 2 + n
    options = strings[0].rstrip(b"\0").decode("utf-8", "replace")
    return ServerKeyMethod2(bytes(data[5 : 5 + RANDOM_SIZE]), bytes(data[5 + RANDOM_SIZE : fixed]), options, pos)


@dataclass(slots=True)
class PushReply:
    """What the server pushed (ovpn26 options.c names), parsed from one or more PUSH_REPLY messages."""

    options: list[str]
    address: ipaddress.IPv4Address | None = None
    netmask: ipaddress.IPv4Address | None = None
    route_gateway: ipaddress.IPv4Address | None = None
    topology: str | None = None
    routes: list[ipaddress.IPv4Network] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)
    peer_id: int | None = None
    cipher: str | None = None
    ping: int | None = None
    ping_restart: int | None = None
    tun_mtu: int | None = None
    tls_ekm: bool = False
    cc_exit: bool = False
    auth_token: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, options: list[str]) -> PushReply:
        reply = cls(list(options))
        for opt in options:
            name, _, rest = opt.partition(" ")
            args = rest.split()
            try:
                if name == "ifconfig" and len(args) >= 2:
                    reply.address, reply.netmask = ipaddress.IPv4Address(args[0]), ipaddress.IPv4Address(args[1])
                elif name == "route-gateway" and args:
                    reply.route_gateway = ipaddress.IPv4Address(args[0])
                elif name == "topology" and args:
                    reply.topology = args[0]
                elif name == "route" and args:
                    mask = args[1] if len(args) > 1 and args[1] != "default" else "255.255.255.255"
                    reply.routes.append(ipaddress.IPv4Network(f"{args[0]}/{mask}", strict=False))
                elif name == "dhcp-option" and len(args) >= 2 and args[0] == "DNS":
                    reply.dns_servers.append(args[1])
                elif name == "peer-id" and args:
                    reply.peer_id = int(args[0])
                elif name == "cipher" and args:
                    reply.cipher = args[0].upper()
                elif name == "ping" and args:
                    reply.ping = int(args[0])
                elif name == "ping-restart" and args:
                    reply.ping_restart = int(args[0])
                elif name == "tun-mtu" and args:
                    reply.tun_mtu = int(args[0])
                elif name == "key-derivation" and args == ["tls-ekm"]:
                    reply.tls_ekm = True
                elif name == "protocol-flags":
                    reply.tls_ekm = reply.tls_ekm or "tls-ekm" in args
                    reply.cc_exit = "cc-exit" in args
                elif name == "auth-token" and args:
                    reply.auth_token = args[0]
            except ValueError as exc:
                raise PacketError(f"bad pushed option {opt!r}: {exc}") from None
        return reply


@dataclass(slots=True)
class Connected(ev.Event):
    """The tunnel is up: the PUSH_REPLY arrived and data keys are installed."""

    push: PushReply
    cipher: str
    tls_version: str
    tls_group: str = ""


# ============================================================================ the session
class _KeyState:
    __slots__ = (
        "data_key",
        "deadline",
        "key_id",
        "km2_sent",
        "phase",
        "plaintext",
        "receiver",
        "sender",
        "server_km2",
        "source",
        "tls",
    )

    def __init__(self, key_id: int, tls: TlsEndpoint, deadline: float, tls_timeout: float) -> None:
        self.key_id = key_id
        self.tls = tls
        self.sender = ReliableSender(0, tls_timeout)
        self.receiver = ReliableReceiver(0)
        self.phase = "reset"  # reset -> tls -> km2 (ours sent) -> active (server's arrived) | failed
        self.km2_sent = False
        self.server_km2: ServerKeyMethod2 | None = None
        self.plaintext = bytearray()
        self.data_key: DataKey | None = None
        self.deadline = deadline  # hand-window for a negotiating key, end of transition for a lame duck
        self.source = KeySource(os.urandom(PRE_MASTER_SIZE), os.urandom(RANDOM_SIZE), os.urandom(RANDOM_SIZE))


class OpenVPNClientSession:
    """Client side of one OpenVPN (UDP) session; the first packet is queued at construction."""

    def __init__(
        self,
        tls_context: SSL.Context,
        wrap: TlsWrap,
        now: float,
        *,
        peer_info: dict[str, str] | None = None,
        options: str = DEFAULT_OPTIONS,
        username: str | None = None,
        password: str | None = None,
        tls_timeout: float = 2.0,
        hand_window: float = 60.0,
        ping: int | None = None,
        ping_restart: int | None = None,
        transition_window: float = TRANSITION_WINDOW,
        session_id: bytes | None = None,
    ) -> None:
        self._tls_context = tls_context
        self.wrap = wrap
        self.own_sid = session_id or os.urandom(8)
        self.server_sid: bytes | None = None
        self.peer_info = dict(DEFAULT_PEER_INFO if peer_info is None else peer_info)
        self.options = options
        self.username, self.password = username, password
        self.tls_timeout = tls_timeout
        self.hand_window = hand_window
        self.transition_window = transition_window
        self._ping_override, self._ping_restart_override = ping, ping_restart
        self.ping = ping or DEFAULT_PING
        self.ping_restart = ping_restart or DEFAULT_PING_RESTART
        self.created_at = now
        self.connected_at: float | None = None
        self._wrap_tx_id = 0
        self._wrap_rx = ReplayWindow(64)
        self._out: list[bytes] = []
        self._events: deque[ev.Event] = deque()
        self.keys: list[_KeyState | None] = [None] * 8
        self.rx_keys: list[DataKey | None] = [None] * 8
        self.tx_key: DataKey | None = None
        self.primary: _KeyState | None = None
        self._last_key_id = 0
        self.push: PushReply | None = None
        self._push_parts: list[str] = []
        self._push_request_at: float | None = None
        self._echo_reset_ack = True  # until the server's session answers, every packet re-ACKs its reset
        self.closed = False
        self.close_reason = ""
        self.packets_in = self.packets_out = self.bytes_in = self.bytes_out = 0
        self.pings_sent = self.pings_received = 0
        self.drops = 0
        self.last_drop = ""
        self._tick_at: float | None = None
        self._seen_in = self._seen_out = 0
        self._last_rx_progress = now
        ks = _KeyState(0, TlsEndpoint(tls_context, server=False), now + hand_window, tls_timeout)
        self.keys[0] = ks
        ks.sender.queue(P_CONTROL_HARD_RESET_CLIENT_V2, b"")
        self._flush(now)

    # ------------------------------------------------------------------ properties
    @property
    def connected(self) -> bool:
        return self.tx_key is not None and not self.closed

    @property
    def address(self) -> ipaddress.IPv4Address | None:
        return self.push.address if self.push else None

    @property
    def peer_id(self) -> int | None:
        return self.push.peer_id if self.push else None

    @property
    def cipher(self) -> str | None:
        return self.tx_key.cipher if self.tx_key else None

    # ------------------------------------------------------------------ outputs
    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _emit(self, event: ev.Event) -> None:
        self._events.append(event)

    def _drop(self, reason: str) -> None:
        self.drops += 1
        self.last_drop = reason
        self._emit(ev.PacketDropped(reason))

    # ------------------------------------------------------------------ input
    def receive(self, datagram: bytes, now: float) -> bytes | None:
        """Any datagram from the server. Returns the IP packet of a data packet (b"" when it was a
        keepalive, None when dropped); control packets return None after being processed."""
        if not datagram:
            return None
        if datagram[0] >> 3 in DATA_OPCODES:
            return self.decrypt(datagram)
        self.receive_control(datagram, now)
        return None

    def receive_control(self, data: bytes, now: float) -> None:
        if self.closed:
            return
        try:
            opcode, key_id, sid = split_header(data)
            replay_id, body = self.wrap.unwrap(data)
            if not self._wrap_rx.check(replay_id):
                raise WrapError(f"replayed control packet (id {replay_id})")
            packet = parse_body(opcode, key_id, sid, body)
        except PacketError as exc:
            self._drop(str(exc))
            return
        if packet.acks and packet.remote_session_id != self.own_sid:
            self._drop("ACK for another client session")
            return
        if self.server_sid is None:
            if opcode != P_CONTROL_HARD_RESET_SERVER_V2 or key_id != 0:
                self._drop(f"opcode {opcode} before the server's reset")
                return
            self.server_sid = sid
        elif sid != self.server_sid:
            self._drop("control packet with another server session id")
            return
        self._wrap_rx.update(replay_id)
        self._last_rx_progress = now
        if opcode != P_CONTROL_HARD_RESET_SERVER_V2:
            self._echo_reset_ack = False  # the server has a session for us: it got our ACK
        ks = self.keys[key_id]
        if opcode == P_CONTROL_SOFT_RESET_V1 and (
            ks is None or (ks is not self.primary and ks.phase in ("active", "failed"))
        ):
            # a new renegotiation (the slot may hold a lame duck); a retransmitted reset for one in
            # progress, or for the key it made primary, is a duplicate instead
            if self.primary is None:
                self._drop("renegotiation before the first key is established")
                return
            ks = self._start_renegotiation(key_id, now, by_client=False)
        elif ks is None:
            self._drop(f"packet for unknown key_id {key_id}")
            return
        for pid in packet.acks:
            ks.sender.ack(pid)
        if packet.packet_id is not None:
            for op, payload in ks.receiver.receive(packet.opcode, packet.packet_id, packet.payload):
                if op == P_CONTROL_HARD_RESET_SERVER_V2 and ks.phase == "reset":
                    ks.phase = "tls"
                    ks.tls.start()
                elif op == P_CONTROL_V1 and payload:
                    self._tls_input(ks, payload, now)
                if self.closed:
                    return
        self._flush(now)

    def _start_renegotiation(self, key_id: int, now: float, by_client: bool) -> _KeyState:
        old = self.keys[key_id]
        if old is not None and old is not self.primary and self.rx_keys[key_id] is old.data_key:
            self.rx_keys[key_id] = None
        ks = _KeyState(key_id, TlsEndpoint(self._tls_context, server=False), now + self.hand_window, self.tls_timeout)
        ks.phase = "tls"
        self.keys[key_id] = ks
        self._last_key_id = key_id
        ks.sender.queue(P_CONTROL_SOFT_RESET_V1, b"")  # the responder sends its own reset too (ovpn26)
        ks.tls.start()
        self._emit(ev.RenegotiationStarted(key_id, by_client))
        return ks

    def _tls_input(self, ks: _KeyState, records: bytes, now: float) -> None:
        if ks.phase == "failed" or not ks.tls.alive:
            return
        plain = ks.tls.receive_records(records)
        if ks.tls.failed:
            self._fail_key(ks, f"TLS handshake failed: {ks.tls.failed}", now)
            return
        if ks.tls.established and not ks.km2_sent:
            ks.tls.send(build_client_key_method_2(ks.source, self.options, self.username, self.password,
                                                  self.peer_info))
            ks.km2_sent = True
            ks.phase = "km2"
        if not plain:
            return
        ks.plaintext += plain
        if ks.server_km2 is None:
            try:
                km2 = parse_server_key_method_2(bytes(ks.plaintext))
            except PacketError as exc:
                self._fail_key(ks, str(exc), now)
                return
            if km2 is None:
                return
            ks.server_km2 = km2
            del ks.plaintext[: km2.length]
            self._server_key_method_2(ks, now)
        while b"\0" in ks.plaintext and not self.closed:
            raw, _, rest = bytes(ks.plaintext).partition(b"\0")
            ks.plaintext[:] = rest
            self._control_message(ks, raw.decode("utf-8", "replace"), now)

    def _server_key_method_2(self, ks: _KeyState, now: float) -> None:
        if self.primary is None:
            # the initial key: ask for the configuration (a server seeing IV_PROTO_REQUEST_PUSH may push anyway)
            self._send_message(ks, "PUSH_REQUEST")
            self._push_request_at = now + PUSH_REQUEST_INTERVAL
            return
        # renegotiation: the new key is usable at once (what we pushed at the start still applies)
        self._activate(ks, now)
        self._emit(ev.Renegotiated(ks.key_id))

    def _control_message(self, ks: _KeyState, message: str, now: float) -> None:
        if message.startswith("PUSH_REPLY"):
            self._push_reply(ks, message, now)
        elif message.startswith("AUTH_FAILED"):
            reason = message.partition(",")[2]
            self._emit(ev.AuthFailed(ks.key_id, reason))
            self._close(now, f"server sent {message}")
        elif message.startswith("AUTH_PENDING"):
            timeout = self.hand_window
            for kv in message.partition(",")[2].split(","):
                name, _, value = kv.strip().partition(" ")
                if name == "timeout" and value.isdigit():
                    timeout = float(value)
            ks.deadline = max(ks.deadline, now + timeout)
            self._emit(ev.ControlMessage(ks.key_id, message))
        elif message.startswith(("RESTART", "HALT")):
            self._emit(ev.ControlMessage(ks.key_id, message))
            self._close(now, f"server sent {message}")
        elif message:
            self._emit(ev.ControlMessage(ks.key_id, message))

    def _push_reply(self, ks: _KeyState, message: str, now: float) -> None:
        if self.push is not None:
            return  # a repeated reply (we asked twice): the first one configured us
        parts = message.split(",")[1:]
        cont = [p for p in parts if p.startswith("push-continuation ")]
        self._push_parts += [p for p in parts if not p.startswith("push-continuation ") and p]
        if cont and cont[-1].endswith(" 2"):
            return  # more parts follow
        try:
            push = PushReply.parse(self._push_parts)
        except PacketError as exc:
            self._close(now, str(exc))
            return
        if ks.server_km2 is None:
            self._close(now, "PUSH_REPLY before the server's key-method-2 message")
            return
        cipher = push.cipher or "AES-256-GCM"  # no peer-id pushed: P_DATA_V1 (see _activate)
        self.push = push
        self._push_request_at = None
        if self._ping_override is None and push.ping:
            self.ping = push.ping
        if self._ping_restart_override is None and push.ping_restart:
            self.ping_restart = push.ping_restart
        try:
            self._activate(ks, now, cipher)
        except (KeyError, ValueError) as exc:
            self._close(now, f"cannot install data keys: {exc}")
            return
        self.connected_at = now
        self._tick_at = now + self.ping
        self._last_rx_progress = now
        self._emit(Connected(push, cipher, ks.tls.version, ks.tls.group))

    def _activate(self, ks: _KeyState, now: float, cipher: str | None = None) -> None:
        cipher = cipher or (self.tx_key.cipher if self.tx_key else "AES-256-GCM")
        assert self.push is not None and ks.server_km2 is not None
        if self.push.tls_ekm:
            key2 = Key2(ks.tls.export_keying_material(EKM_LABEL, 256))
        else:
            source = ks.source
            source.server_random1, source.server_random2 = ks.server_km2.random1, ks.server_km2.random2
            assert self.server_sid is not None
            key2 = source.legacy_key2(self.own_sid, self.server_sid)
        peer_id = self.push.peer_id
        ks.data_key = DataKey(cipher, key2, ks.key_id, peer_id if peer_id is not None else 0xFFFFFF,
                              server=False, data_v2=peer_id is not None)
        ks.phase = "active"
        previous = self.primary
        self.primary = ks
        self.rx_keys[ks.key_id] = ks.data_key
        self.tx_key = ks.data_key
        if previous is not None and previous is not ks:
            previous.deadline = now + self.transition_window  # lame duck: still decrypts until then
            previous.tls.free()

    # ------------------------------------------------------------------ application
    def renegotiate(self, now: float) -> None:
        """Start a client-initiated renegotiation (a new TLS session and data key)."""
        if self.closed or self.primary is None or self._renegotiating():
            return
        key_id = self._last_key_id % 7 + 1
        self._start_renegotiation(key_id, now, by_client=True)
        self._flush(now)

    def send_control_message(self, text: str, now: float) -> None:
        ks = self.primary or self.keys[0]
        if ks is None or self.closed or not ks.tls.established:
            return
        self._send_message(ks, text)
        self._flush(now)

    def disconnect(self, now: float, reason: str = "client disconnected") -> None:
        """Leave: explicit-exit-notify over the data channel (what an openvpn UDP client does), then close."""
        if self.closed:
            return
        if self.tx_key is not None:
            packet = self.tx_key.encrypt(OCC_MAGIC + bytes([OCC_EXIT]))
            if packet is not None:
                self._out.append(packet)
        self._close(now, reason)

    def close(self, now: float, reason: str) -> None:
        """End at once, without telling the server."""
        self._close(now, reason)

    # ------------------------------------------------------------------ data path
    def encrypt(self, ip_packet: bytes) -> bytes | None:
        key = self.tx_key
        if key is None:
            return None
        self.packets_out += 1
        self.bytes_out += len(ip_packet)
        return key.encrypt(ip_packet)

    def decrypt(self, packet: bytes) -> bytes | None:
        """An IP packet from the tunnel, b"" for a keepalive ping, None when dropped (`last_drop`)."""
        key = self.rx_keys[packet[0] & 7]
        if key is None:
            self.drops += 1
            self.last_drop = f"data packet for inactive key_id {packet[0] & 7}"
            return None
        plain = key.decrypt(packet)
        if plain is None:
            self.drops += 1
            self.last_drop = key.last_error
            return None
        self.packets_in += 1
        if len(plain) == 16 and is_keepalive(plain):
            self.pings_received += 1
            return b""
        self.bytes_in += len(plain)
        return plain

    # ------------------------------------------------------------------ timers
    def timer(self) -> float | None:
        if self.closed:
            return None
        deadlines: list[float] = []
        if self._tick_at is not None:
            deadlines.append(self._tick_at)
        if self._push_request_at is not None:
            deadlines.append(self._push_request_at)
        for ks in self.keys:
            if ks is None:
                continue
            d = ks.sender.next_deadline()
            if d is not None:
                deadlines.append(d)
            if ks is not self.primary:
                deadlines.append(ks.deadline)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        for ks in self.keys:
            if ks is None or ks is self.primary or now < ks.deadline:
                continue
            if self.primary is None:
                self._close(now, "TLS handshake or push did not finish within hand-window")
                return
            self._retire(ks)
        if self._push_request_at is not None and now >= self._push_request_at and self.push is None:
            ks = self.keys[0]
            if ks is not None and ks.tls.established:
                self._send_message(ks, "PUSH_REQUEST")
            self._push_request_at = now + PUSH_REQUEST_INTERVAL
        if self._tick_at is not None and now >= self._tick_at:
            self._keepalive_tick(now)
            if self.closed:
                return
        self._flush(now)

    def _keepalive_tick(self, now: float) -> None:
        self._tick_at = now + self.ping
        if self.packets_in != self._seen_in:
            self._seen_in = self.packets_in
            self._last_rx_progress = now
        elif now - self._last_rx_progress >= self.ping_restart:
            self._close(now, f"ping-restart: nothing from the server for {now - self._last_rx_progress:.0f} s")
            return
        if self.packets_out == self._seen_out and self.tx_key is not None:
            ping = self.tx_key.encrypt(KEEPALIVE_PING)
            if ping is not None:
                self._out.append(ping)
                self.packets_out += 1
                self.pings_sent += 1
        self._seen_out = self.packets_out

    def _renegotiating(self) -> bool:
        return any(ks is not None and ks is not self.primary and ks.phase in ("tls", "km2") for ks in self.keys)

    def _retire(self, ks: _KeyState) -> None:
        if self.rx_keys[ks.key_id] is ks.data_key:
            self.rx_keys[ks.key_id] = None
        self.keys[ks.key_id] = None

    def _fail_key(self, ks: _KeyState, reason: str, now: float) -> None:
        ks.phase = "failed"
        self._emit(ev.HandshakeFailed(ks.key_id, reason))
        if self.primary is None:
            self._close(now, reason)
        else:
            self._retire(ks)

    def _close(self, now: float, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.tx_key = None
        self.rx_keys = [None] * 8
        self.keys = [None] * 8
        self.primary = None
        self._emit(ev.SessionClosed(reason))

    # ------------------------------------------------------------------ output
    def _send_message(self, ks: _KeyState, message: str) -> None:
        try:
            ks.tls.send(message.encode() + b"\0")
        except SSL.Error:
            pass

    def _send_packet(self, packet: ControlPacket, now: float) -> None:
        self._wrap_tx_id += 1
        self._out.append(self.wrap.wrap(packet.header(), packet.body(), self._wrap_tx_id, int(now)))

    def _flush(self, now: float) -> None:
        for ks in self.keys:
            if ks is None:
                continue
            if ks.phase != "reset" and ks.tls.alive:
                records = ks.tls.records_to_send()
                for i in range(0, len(records), TLS_PAYLOAD_CHUNK):
                    ks.sender.queue(P_CONTROL_V1, records[i : i + TLS_PAYLOAD_CHUNK])
            for opcode, pid, payload in ks.sender.to_send(now):
                acks = ks.receiver.take_acks(MAX_ACKS_PIGGYBACK)
                if not acks and self._echo_reset_ack and self.server_sid is not None and ks.key_id == 0:
                    # the server creates our session only from a packet that ACKs its reset (HMAC
                    # cookie): retransmissions carry that ACK again (ovpn26 lru_acks)
                    acks = [0]
                remote = self.server_sid if acks else None
                self._send_packet(ControlPacket(opcode, ks.key_id, self.own_sid, acks, remote, pid, payload), now)
            while ks.receiver.pending_acks and self.server_sid is not None:
                acks = ks.receiver.take_acks(MAX_ACKS_STANDALONE)
                self._send_packet(ControlPacket(P_ACK_V1, ks.key_id, self.own_sid, acks, self.server_sid), now)
