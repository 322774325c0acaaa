"""One OpenVPN client session, server side, as a sans-I/O state machine.

Inputs: `receive_control(packet, now)`, `decrypt(packet)` (data fast path), `handle_timer(now)`
and the application's decisions (`authorize`, `deny`, `disconnect`). Outputs: `datagrams_to_send()`,
`next_event()`, `timer()`. No sockets, no clock reads.

A session holds up to eight key states (key_id 0..7), one per TLS session: the initial one and
each renegotiation. Data keys are selected by the key_id in each data packet, so traffic keeps
flowing with the old key while a new one is negotiated.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from OpenSSL import SSL

from . import events as ev
from .data_channel import (
    BYTES_IN,
    BYTES_OUT,
    PACKETS_IN,
    PACKETS_OUT,
    SUPPORTED_CIPHERS,
    DataChannel,
    DataKey,
    KeySpec,
)
from .keys import (
    EKM_LABEL,
    IV_PROTO_AUTH_PENDING_KW,
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    ClientKeyMethod2,
    build_server_key_method_2,
    parse_client_key_method_2,
)
from .packets import (
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
from .push import ClientNetworkConfig, build_push_replies
from .reliable import ReliableReceiver, ReliableSender
from .replay import ReplayWindow
from .static_key import Key2
from .tls import TlsEndpoint
from .tls_wrap import TlsWrap, WrapError

TLS_PAYLOAD_CHUNK = 1100  # keeps each control packet under openvpn's 1250-byte tls-mtu
CLOSE_LINGER = 2.0  # seconds to let a final control message (AUTH_FAILED, HALT) be delivered
PUSH_REQUEST_DEBOUNCE = 30.0


@dataclass(slots=True)
class SessionSettings:
    ciphers: tuple[str, ...] = ("AES-256-GCM", "CHACHA20-POLY1305", "AES-128-GCM")
    reneg_sec: float = 3600
    ping: int = 10
    ping_restart: int = 60  # pushed to the client; the server waits twice as long, like openvpn
    hand_window: float = 60
    tls_timeout: float = 2.0
    transition_window: float = 3600
    tcp: bool = False
    tun_mtu: int = 1500


class KeyState:
    """One TLS session and its data keys (ovpn26 key_state)."""

    __slots__ = (
        "activated_at",
        "data_key",
        "deadline",
        "key_id",
        "km2",
        "phase",
        "plaintext",
        "push_requested",
        "push_sent_at",
        "receiver",
        "sender",
        "tls",
    )

    def __init__(self, key_id: int, tls: TlsEndpoint, now: float, hand_window: float, tls_timeout: float,
                 first_send_id: int, first_recv_id: int) -> None:
        self.key_id = key_id
        self.tls = tls
        self.sender = ReliableSender(first_send_id, tls_timeout)
        self.receiver = ReliableReceiver(first_recv_id)
        self.phase = "tls"  # tls -> auth (km2 in, awaiting decision) -> authorized -> active | failed
        self.km2: ClientKeyMethod2 | None = None
        self.plaintext = bytearray()  # control-channel commands not yet terminated by NUL
        self.data_key: DataKey | KeySpec | None = None
        self.deadline = now + hand_window
        self.activated_at = 0.0
        self.push_requested = False
        self.push_sent_at: float | None = None


@dataclass(slots=True)
class _Pending:
    """Application decision about the initial key state, applied when the client asks for it."""

    network: ClientNetworkConfig | None = None
    extra_push: list[str] = field(default_factory=list)


class OpenVPNServerSession:
    def __init__(
        self,
        settings: SessionSettings,
        tls_context: SSL.Context | Callable[[], SSL.Context],
        wrap: TlsWrap,
        own_sid: bytes,
        client_sid: bytes,
        peer_id: int,
        now: float,
        wrap_replay_id: int = 1,
    ) -> None:
        self.settings = settings
        # a callable gives each new key state the gateway's current trust (roots added or removed)
        self._tls_context = tls_context if callable(tls_context) else (lambda: tls_context)
        self.wrap = wrap
        self.own_sid = own_sid
        self.client_sid = client_sid
        self.peer_id = peer_id
        self.created_at = now
        self._wrap_tx_id = wrap_replay_id  # the stateless reset reply used id 1
        self._wrap_rx = ReplayWindow(64)
        self._out: list[bytes] = []
        self._events: list[ev.Event] = []  # a few at a time; a deque would cost 760 bytes per session
        self.keys: list[KeyState | None] = [None] * 8
        self.data = DataChannel()  # data fast path: keys by key_id, counters
        # the data path runs in another process (dataplane/): key changes become events, and
        # keepalive pings are asked for (KeepaliveDue) instead of encrypted here
        self.remote_data = False
        self.primary: KeyState | None = None
        self._last_key_id = 0
        self._pending = _Pending()
        self.cipher: str | None = None
        self.peer_info: dict[str, str] = {}
        self._iv_proto = 0  # the client's IV_PROTO from the initial key-method-2: fixes key derivation
        self.closed = False
        self._close_at: float | None = None
        self._close_reason = ""
        # keepalive bookkeeping by counters: the data path never reads the clock
        self._tick_at = now + settings.ping
        self._seen_in = self._seen_out = 0
        self._last_rx_progress = now
        self.drops = 0
        self.last_drop = ""
        # key_id 0: the reset exchange already happened (statelessly): our reset is id 0, theirs too
        ks = self._new_key_state(0, now, first_send_id=1, first_recv_id=1)
        self.keys[0] = ks

    # ------------------------------------------------------------------ helpers
    def _new_key_state(self, key_id: int, now: float, first_send_id: int = 0, first_recv_id: int = 0) -> KeyState:
        ks = KeyState(key_id, TlsEndpoint(self._tls_context()), now, self.settings.hand_window,
                      self.settings.tls_timeout, first_send_id, first_recv_id)
        return ks

    def _emit(self, event: ev.Event) -> None:
        self._events.append(event)

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def next_event(self) -> ev.Event | None:
        return self._events.pop(0) if self._events else None

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _send_packet(self, packet: ControlPacket, now: float) -> None:
        self._wrap_tx_id += 1
        self._out.append(self.wrap.wrap(packet.header(), packet.body(), self._wrap_tx_id, int(now)))

    # ------------------------------------------------------------------ control channel input
    def receive_control(self, data: bytes, now: float) -> None:
        """One control packet from the client; malformed or forged packets are dropped and counted."""
        if self.closed:
            return
        try:
            opcode, key_id, sid = split_header(data)
            replay_id, body = self.wrap.unwrap(data)
            if not self._wrap_rx.check(replay_id):
                raise WrapError(f"replayed control packet (id {replay_id})")
            packet = parse_body(opcode, key_id, sid, body)
        except PacketError as exc:
            self.drops += 1
            self._emit(ev.PacketDropped(str(exc)))
            return
        if sid != self.client_sid:
            self.drops += 1
            self._emit(ev.PacketDropped("control packet with another session id"))
            return
        if packet.acks and packet.remote_session_id != self.own_sid:
            self.drops += 1
            self._emit(ev.PacketDropped("ACK for another server session"))
            return
        self._wrap_rx.update(replay_id)
        self._last_rx_progress = now
        ks = self.keys[key_id]
        if opcode == P_CONTROL_SOFT_RESET_V1 and self.primary is None:
            self._emit(ev.PacketDropped("renegotiation requested before the first key is established"))
            return
        if opcode == P_CONTROL_SOFT_RESET_V1 and (
            ks is None or (ks is not self.primary and ks.phase in ("active", "failed"))
        ):
            # a new renegotiation (key ids cycle 1..7, so the slot may hold a superseded key);
            # a retransmitted reset for a negotiation in progress is a duplicate instead
            ks = self._start_renegotiation(key_id, now, by_client=True)
        elif ks is None:
            self._emit(ev.PacketDropped(f"packet for unknown key_id {key_id}"))
            return
        for pid in packet.acks:
            ks.sender.ack(pid)
        if packet.opcode == P_CONTROL_HARD_RESET_CLIENT_V2:
            # the client did not see our ACK yet: re-ACK its reset (id 0), nothing else
            if 0 not in ks.receiver.pending_acks:
                ks.receiver.pending_acks.append(0)
        elif packet.packet_id is not None:
            for op, payload in ks.receiver.receive(packet.opcode, packet.packet_id, packet.payload):
                if op == P_CONTROL_V1 and payload:
                    self._tls_input(ks, payload, now)
        self._flush(now)

    def _start_renegotiation(self, key_id: int, now: float, by_client: bool) -> KeyState:
        old = self.keys[key_id]
        if old is not None and old is not self.primary:
            self.data.rx_keys[key_id] = None
            self._data_keys_changed()
        ks = self._new_key_state(key_id, now)
        self.keys[key_id] = ks
        self._last_key_id = key_id
        ks.sender.queue(P_CONTROL_SOFT_RESET_V1, b"")
        self._emit(ev.RenegotiationStarted(key_id, by_client))
        return ks

    def _tls_input(self, ks: KeyState, records: bytes, now: float) -> None:
        if ks.phase == "failed":
            return  # the rest of a batch after a failed handshake
        plain = ks.tls.receive_records(records)
        if ks.tls.failed:
            self._fail_key(ks, f"TLS handshake failed: {ks.tls.failed}", now)
            return
        if not plain:
            return
        ks.plaintext += plain
        if ks.phase == "tls":
            consumed = self._key_method_2(ks, bytes(ks.plaintext), now)
            del ks.plaintext[:consumed]
        while b"\0" in ks.plaintext and ks.phase != "failed":
            raw, _, rest = bytes(ks.plaintext).partition(b"\0")
            ks.plaintext[:] = rest
            self._control_message(ks, raw.decode("utf-8", "replace"), now)

    def _key_method_2(self, ks: KeyState, message: bytes, now: float) -> int:
        """Handle the client's key-method-2 message; returns how many bytes it took."""
        try:
            km2 = parse_client_key_method_2(message)
        except PacketError as exc:
            self._fail_key(ks, f"bad key-method-2 message: {exc}", now)
            return len(message)
        ks.km2 = km2
        ks.phase = "auth"
        if self.primary is None:
            self.peer_info = km2.peer_info
            self._iv_proto = km2.iv_proto
        ks.tls.send(build_server_key_method_2(km2.source, self._options_string()))
        if self.primary is not None:
            # renegotiation: the client switches to the new key as soon as it has our reply, so
            # decrypt with it from now on; it becomes our sending key once re-authorized
            ks.data_key = self._derive_data_key(ks)
            self.data.rx_keys[ks.key_id] = ks.data_key
            self._data_keys_changed()
        self._emit(
            ev.AuthRequest(
                key_id=ks.key_id,
                renegotiation=ks is not self.keys[0] or self.primary is not None,
                username=km2.username,
                password=km2.password,
                peer_info=km2.peer_info,
                peer_chain=ks.tls.peer_chain(),
                tls_version=ks.tls.version,
            )
        )
        return km2.length

    def _options_string(self) -> str:
        proto = "TCPv4_SERVER" if self.settings.tcp else "UDPv4"
        cipher = self.cipher or self.settings.ciphers[0]
        return (
            f"V4,dev-type tun,link-mtu 1559,tun-mtu {self.settings.tun_mtu},proto {proto},cipher {cipher},"
            "auth [null-digest],keysize 256,key-method 2,tls-server"
        )

    def _control_message(self, ks: KeyState, message: str, now: float) -> None:
        if message == "PUSH_REQUEST":
            ks.push_requested = True
            self._maybe_push(ks, now)
        elif message == "EXIT":
            self._emit(ev.ClientExit("client sent EXIT"))
            self._close(now, "client exited", linger=False)
        elif message.startswith("CR_RESPONSE,"):
            try:
                answer = base64.b64decode(message[len("CR_RESPONSE,"):], validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                self._emit(ev.PacketDropped("CR_RESPONSE with invalid base64"))
                return
            self._emit(ev.ChallengeResponse(ks.key_id, answer))
        elif message:
            self._emit(ev.ControlMessage(ks.key_id, message))

    # ------------------------------------------------------------------ application decisions
    def authorize(self, key_id: int, network: ClientNetworkConfig | None = None,
                  extra_push: list[str] | None = None, now: float = 0.0) -> None:
        """Accept the credentials of key state `key_id`; the first one also gets the tunnel config."""
        ks = self.keys[key_id]
        if ks is None or ks.phase != "auth" or self.closed:
            return
        ks.phase = "authorized"
        if self.primary is None:
            self._pending = _Pending(network, list(extra_push or []))
            self.cipher = self._choose_cipher(ks.km2)
            if self.cipher is None:
                offered = ks.km2.peer_info.get("IV_CIPHERS", "none") if ks.km2 else "none"
                self._deny(ks, f"no common data-channel cipher (client offers {offered})", now)
                self._flush(now)
                return
            if ks.km2 is not None and ks.km2.iv_proto & IV_PROTO_REQUEST_PUSH:
                ks.push_requested = True  # the client accepts an unsolicited reply: save it a round trip
            self._maybe_push(ks, now)
        else:
            self._activate(ks, now)
        self._flush(now)

    def pending(self, key_id: int, now: float, timeout: float, challenge: str | None = None,
                echo: bool = False, web_auth_url: str | None = None) -> None:
        """Authentication continues elsewhere (RADIUS push-MFA, a challenge, a browser): tell the
        client to wait up to `timeout` seconds, optionally with a CR_TEXT challenge to answer or
        a WEB_AUTH URL to open."""
        ks = self.keys[key_id]
        if ks is None or ks.phase != "auth" or self.closed:
            return
        keyword = self._iv_proto & IV_PROTO_AUTH_PENDING_KW
        self._send_message(ks, f"AUTH_PENDING,timeout {int(timeout)}" if keyword else "AUTH_PENDING")
        if challenge is not None:
            self._send_message(ks, f"INFO_PRE,CR_TEXT:{'R,E' if echo else 'R'}:{challenge}")
        if web_auth_url is not None:
            self._send_message(ks, f"INFO_PRE,WEB_AUTH::{web_auth_url}")
        ks.deadline = max(ks.deadline, now + timeout)
        self._flush(now)

    @property
    def sso_methods(self) -> set[str]:
        """What the client can do with pending authentication (IV_SSO: webauth, openurl, crtext)."""
        return {m.strip() for m in self.peer_info.get("IV_SSO", "").split(",") if m.strip()}

    def deny(self, key_id: int, reason: str, now: float) -> None:
        ks = self.keys[key_id]
        if ks is None or self.closed:
            return
        self._deny(ks, reason, now)
        self._flush(now)

    def _deny(self, ks: KeyState, reason: str, now: float) -> None:
        ks.phase = "failed"
        self._send_message(ks, f"AUTH_FAILED,{reason}" if reason else "AUTH_FAILED")
        self._emit(ev.AuthFailed(ks.key_id, reason))
        self._close(now, f"authentication failed: {reason}", linger=True)

    def _choose_cipher(self, km2: ClientKeyMethod2 | None) -> str | None:
        offered = km2.ciphers if km2 else []
        if not offered:
            return None
        for cipher in self.settings.ciphers:
            if cipher in offered and cipher in SUPPORTED_CIPHERS:
                return cipher
        return None

    def _maybe_push(self, ks: KeyState, now: float) -> None:
        if ks.key_id != 0 or ks.phase not in ("authorized", "active") or not ks.push_requested:
            return  # only the initial key state carries the tunnel configuration
        if ks.push_sent_at is not None and now - ks.push_sent_at < PUSH_REQUEST_DEBOUNCE and ks.phase == "active":
            return
        if ks.phase == "authorized":
            self._activate(ks, now)
        for message in build_push_replies(self._push_options(ks)):
            ks.tls.send(message)
        ks.push_sent_at = now

    def _push_options(self, ks: KeyState) -> list[str]:
        iv_proto = ks.km2.iv_proto if ks.km2 else 0
        opts = self._pending.network.options() if self._pending.network else []
        opts.append(f"ping {self.settings.ping}")
        opts.append(f"ping-restart {self.settings.ping_restart}")
        opts += self._pending.extra_push
        if iv_proto & IV_PROTO_DATA_V2:
            opts.append(f"peer-id {self.peer_id}")
        opts.append(f"cipher {self.cipher}")
        if iv_proto & IV_PROTO_CC_EXIT_NOTIFY:
            opts.append("protocol-flags cc-exit" + (" tls-ekm" if iv_proto & IV_PROTO_TLS_KEY_EXPORT else ""))
        elif iv_proto & IV_PROTO_TLS_KEY_EXPORT:
            opts.append("key-derivation tls-ekm")
        if "IV_MTU" in self.peer_info:
            opts.append(f"tun-mtu {self.settings.tun_mtu}")
        return opts

    def _activate(self, ks: KeyState, now: float) -> None:
        """Derive data keys for `ks` and make it the primary key (the previous one becomes lame duck)."""
        if ks.data_key is None:
            ks.data_key = self._derive_data_key(ks)
        ks.phase = "active"
        ks.activated_at = now
        previous = self.primary
        self.primary = ks
        self.data.rx_keys[ks.key_id] = ks.data_key
        self.data.tx_key = ks.data_key
        self._data_keys_changed()
        if previous is None:
            self._emit(ev.Established(ks.key_id, self.cipher, ks.tls.version))
        else:
            previous.deadline = now + self.settings.transition_window  # lame duck until then
            self._emit(ev.Renegotiated(ks.key_id))

    def _derive_data_key(self, ks: KeyState) -> DataKey | KeySpec:
        """TLS-EKM if the client announced it at the start (what we pushed applies to every key), else the PRF."""
        assert ks.km2 is not None and self.cipher is not None
        iv_proto = self._iv_proto
        if iv_proto & IV_PROTO_TLS_KEY_EXPORT:
            key2 = Key2(ks.tls.export_keying_material(EKM_LABEL, 256))
        else:
            key2 = ks.km2.source.legacy_key2(self.client_sid, self.own_sid)
        spec = DataKey.make_spec(self.cipher, key2, ks.key_id, self.peer_id, data_v2=bool(iv_proto & IV_PROTO_DATA_V2))
        return KeySpec(spec) if self.remote_data else DataKey.from_spec(spec)

    # ------------------------------------------------------------------ data fast path
    def decrypt(self, packet: bytes) -> bytes | None:
        """Decrypt a (non-empty) data packet: an IP packet for the TUN, b"" when consumed here (keepalive,
        exit notification), None when dropped (`last_drop` says why)."""
        plain = self.data.decrypt(packet)
        if plain is None:
            self.drops += 1
            self.last_drop = self.data.last_drop
        elif not plain and self.data.exited:
            self.client_exited()
        return plain

    def encrypt(self, ip_packet: bytes) -> bytes | None:
        return self.data.encrypt(ip_packet)

    def client_exited(self) -> None:
        """explicit-exit-notify seen on the data channel (here or by a data-plane worker)."""
        if self.closed or self._close_reason == "client exited":
            return
        self._emit(ev.ClientExit("client sent explicit-exit-notify"))
        self._close_at = 0.0  # due at once: handle_timer closes the session
        self._close_reason = "client exited"

    @property
    def packets_in(self) -> int:
        return self.data.stats[PACKETS_IN]

    @property
    def packets_out(self) -> int:
        return self.data.stats[PACKETS_OUT]

    @property
    def bytes_in(self) -> int:
        return self.data.stats[BYTES_IN]

    @property
    def bytes_out(self) -> int:
        return self.data.stats[BYTES_OUT]

    def move_data(self, stats: memoryview) -> None:
        """Another process (a data-plane worker) encrypts and decrypts for this session from now on,
        counting in `stats` (a shared-memory row): keep only the key specs it is sent, and ask for
        keepalives (KeepaliveDue) and report key changes (DataKeysChanged) instead."""
        stats[:] = self.data.stats  # what was counted here so far
        self.data.stats = stats
        self.remote_data = True
        specs: dict[int, KeySpec] = {}  # by id() of the key it replaces: `is` comparisons keep holding

        def shed(key: DataKey | KeySpec | None) -> KeySpec | None:
            if key is None or isinstance(key, KeySpec):
                return key
            return specs.setdefault(id(key), KeySpec(key.spec))

        self.data.rx_keys = [shed(key) for key in self.data.rx_keys]
        self.data.tx_key = shed(self.data.tx_key)
        for ks in self.keys:
            if ks is not None:
                ks.data_key = shed(ks.data_key)

    def data_lost(self) -> None:
        """The process serving the data channel died, and with it the keys' packet-id counters:
        nothing may be sent with these keys again (the session is about to be told to reconnect)."""
        self.data.clear()
        self.remote_data = False

    def _data_keys_changed(self) -> None:
        if self.remote_data:
            self._emit(ev.DataKeysChanged())

    # ------------------------------------------------------------------ timers and shutdown
    def timer(self) -> float | None:
        if self.closed:
            return None
        deadlines = [self._tick_at]
        if self._close_at is not None:
            deadlines.append(self._close_at)
        for ks in self.keys:
            if ks is None:
                continue
            d = ks.sender.next_deadline()
            if d is not None:
                deadlines.append(d)
            if ks.phase != "active" or ks is not self.primary:
                deadlines.append(ks.deadline)
        if self.primary is not None and self.settings.reneg_sec and not self._renegotiating():
            deadlines.append(self.primary.activated_at + self.settings.reneg_sec)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._close_at is not None and now >= self._close_at:
            self._close(now, self._close_reason, linger=False)
            return
        for ks in self.keys:
            if ks is None:
                continue
            if now >= ks.deadline and (ks.phase != "active" or ks is not self.primary):
                if ks is self.keys[0] and self.primary is None:
                    self._close(now, "TLS handshake or authentication did not finish within hand-window", linger=False)
                    return
                self._retire(ks)
        if now >= self._tick_at:
            self._keepalive_tick(now)
            if self.closed:
                return
        if (
            self.primary is not None
            and self.settings.reneg_sec
            and now >= self.primary.activated_at + self.settings.reneg_sec
            and not self._renegotiating()
        ) or (self.data.tx_key is not None and self.data.tx_key.needs_renegotiation and not self._renegotiating()):
            key_id = self._last_key_id % 7 + 1  # 1..7, never back to 0
            self._start_renegotiation(key_id, now, by_client=False)
        self._flush(now)

    def _renegotiating(self) -> bool:
        return any(ks is not None and ks is not self.primary and ks.phase in ("tls", "auth", "authorized")
                   for ks in self.keys)

    def _retire(self, ks: KeyState) -> None:
        if self.data.rx_keys[ks.key_id] is ks.data_key:
            self.data.rx_keys[ks.key_id] = None
            self._data_keys_changed()
        self.keys[ks.key_id] = None

    def _keepalive_tick(self, now: float) -> None:
        self._tick_at = now + self.settings.ping
        if self.packets_in != self._seen_in:
            self._seen_in = self.packets_in
            self._last_rx_progress = now
        elif now - self._last_rx_progress >= 2 * self.settings.ping_restart and self.primary is not None:
            self._close(now, f"no traffic for {2 * self.settings.ping_restart} s (ping-restart)", linger=False)
            return
        if self.packets_out == self._seen_out and self.data.tx_key is not None:
            if self.remote_data:
                self._emit(ev.KeepaliveDue())
            else:
                ping = self.data.keepalive()
                if ping is not None:
                    self._out.append(ping)
        self._seen_out = self.packets_out

    def disconnect(self, now: float, message: str = "RESTART") -> None:
        """Tell the client to go (`RESTART` = reconnect, `HALT` = exit, `AUTH_FAILED,…`) and close."""
        if self.closed:
            return
        ks = self.primary or self.keys[0]
        if ks is not None and ks.tls.established:
            self._send_message(ks, message)
            self._flush(now)
        self._close(now, f"disconnected ({message})", linger=True)

    def close(self, now: float, reason: str) -> None:
        """End at once, without telling the client."""
        self._close(now, reason, linger=False)

    def _send_message(self, ks: KeyState, message: str) -> None:
        try:
            ks.tls.send(message.encode() + b"\0")
        except SSL.Error:
            pass

    def _fail_key(self, ks: KeyState, reason: str, now: float) -> None:
        ks.phase = "failed"
        self._emit(ev.HandshakeFailed(ks.key_id, reason))
        if self.primary is None or ks is self.primary:
            self._close(now, reason, linger=True)
        else:
            self._retire(ks)

    def _close(self, now: float, reason: str, linger: bool) -> None:
        if self.closed:
            return
        if linger:
            if self._close_at is None:
                self._close_at = now + CLOSE_LINGER
                self._close_reason = reason
            return
        self.closed = True
        self.data.clear()
        self._data_keys_changed()
        self._emit(ev.SessionClosed(reason or self._close_reason))

    # ------------------------------------------------------------------ output
    def _flush(self, now: float) -> None:
        for ks in self.keys:
            if ks is None:
                continue
            records = ks.tls.records_to_send()
            for i in range(0, len(records), TLS_PAYLOAD_CHUNK):
                ks.sender.queue(P_CONTROL_V1, records[i : i + TLS_PAYLOAD_CHUNK])
            for opcode, pid, payload in ks.sender.to_send(now):
                acks = ks.receiver.take_acks(MAX_ACKS_PIGGYBACK)
                self._send_packet(
                    ControlPacket(opcode, ks.key_id, self.own_sid, acks, self.client_sid if acks else None, pid, payload),
                    now,
                )
            while ks.receiver.pending_acks:
                acks = ks.receiver.take_acks(MAX_ACKS_STANDALONE)
                self._send_packet(ControlPacket(P_ACK_V1, ks.key_id, self.own_sid, acks, self.client_sid), now)


def new_session_id() -> bytes:
    return os.urandom(8)


def server_reset_packet(own_sid: bytes, client_sid: bytes, key_id: int = 0) -> ControlPacket:
    """P_CONTROL_HARD_RESET_SERVER_V2 acknowledging the client's reset (message id 0 both ways)."""
    return ControlPacket(P_CONTROL_HARD_RESET_SERVER_V2, key_id, own_sid, [0], client_sid, 0, b"")
