"""Full in-memory OpenVPN handshakes against OpenVPNListener + OpenVPNServerSession.

The client below is a deliberately small, independent OpenVPN 2.6 client: pyOpenSSL over memory BIOs
as the TLS client, the client side of tls-crypt / tls-auth, its own in-order reliable receive logic,
key-method-2 written by hand (ovpn26 ssl.c key_method_2_write) and data keys from the TLS exporter
(or the legacy PRF). No sockets, a fake clock.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL, crypto
from openvpn_vectors import TEST_PKT_STATIC_KEY, make_pki

from p2sgw.openvpn import events as ev
from p2sgw.dataplane.shared import StatsTable
from p2sgw.openvpn.data_channel import (
    KEEPALIVE_PING,
    OCC_MAGIC,
    PACKET_ID_WRAP_TRIGGER,
    PACKETS_OUT,
    DataChannel,
    DataKey,
    KeySpec,
)
from p2sgw.openvpn.keys import KeySource
from p2sgw.openvpn.packets import (
    DATA_OPCODES,
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
from p2sgw.openvpn.push import ClientNetworkConfig
from p2sgw.openvpn.server import OpenVPNListener
from p2sgw.openvpn.session import SessionSettings
from p2sgw.openvpn.static_key import Key2, parse_static_key
from p2sgw.openvpn.tls import build_server_context
from p2sgw.openvpn.tls_wrap import TlsAuth, TlsCrypt

T0 = 1_700_000_000.0
ADDR = ("198.51.100.7", 40001)
PEER_ID = 7
IP_UP = bytes.fromhex("450000140000400040010000" "0a080002" "0a000001")  # 10.8.0.2 -> 10.0.0.1
IP_DOWN = bytes.fromhex("450000140000400040010000" "0a000001" "0a080002") + b"reply"
PEER_INFO_26 = {
    "IV_VER": "2.6.12",
    "IV_PLAT": "linux",
    "IV_TCPNL": "1",
    "IV_MTU": "1600",
    "IV_NCP": "2",
    "IV_CIPHERS": "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
    "IV_PROTO": "990",
}


# =========================================================================== the test client
def ovpn_string(text: str | None) -> bytes:
    if text is None:
        return b"\0\0"
    raw = text.encode() + b"\0"
    return struct.pack("!H", len(raw)) + raw


def parse_server_km2(buf: bytes) -> tuple[bytes, bytes, str, int] | None:
    """(random1, random2, options, consumed) of the server's key-method-2 message, None if incomplete."""
    if len(buf) < 69:
        return None
    assert buf[:4] == b"\0\0\0\0" and buf[4] & 0x0F == 2, buf[:5]
    pos = 69
    strings = []
    for _ in range(4):
        if len(buf) < pos + 2:
            return None
        (n,) = struct.unpack_from("!H", buf, pos)
        if len(buf) < pos + 2 + n:
            return None
        strings.append(buf[pos + 2 : pos + 2 + n])
        pos += 2 + n
    options = strings[0][:-1].decode()
    assert strings[1:] == [b"", b"", b""], strings  # empty username, password, peer-info (00 00 each)
    return buf[5:37], buf[37:69], options, pos


def client_tls_context(pki, tls_max: int | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    if tls_max is not None:
        ctx.set_max_proto_version(tls_max)
    ctx.use_certificate(pki.client_cert)
    ctx.use_privatekey(pki.client_key)
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(pki.ca_cert))
    ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, err, depth, ok: bool(ok))
    return ctx


@dataclass
class ClientKey:
    key_id: int
    tls: SSL.Connection
    send_id: int = 0
    expected: int = 0
    buffer: dict = field(default_factory=dict)
    acks: list = field(default_factory=list)
    queue: list = field(default_factory=list)  # (opcode, payload) waiting for a reliable id
    plain: bytearray = field(default_factory=bytearray)
    handshake_done: bool = False
    km2_sent: bool = False
    pre_master: bytes = field(default_factory=lambda: os.urandom(48))
    random1: bytes = field(default_factory=lambda: os.urandom(32))
    random2: bytes = field(default_factory=lambda: os.urandom(32))
    server_km2: tuple | None = None
    messages: list = field(default_factory=list)
    data_key: DataKey | None = None
    acked_by_server: set = field(default_factory=set)
    unacked: dict = field(default_factory=dict)  # our reliable id -> (opcode, payload), for retransmission
    tls_error: Exception | None = None


class OvpnTestClient:
    def __init__(self, pki, wrap, *, peer_info=None, username="alice", password="s3cret",
                 options="V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,"
                         "auth [null-digest],keysize 256,key-method 2,tls-client", tls_max=None):
        self.ctx = client_tls_context(pki, tls_max)
        self.wrap = wrap
        self.sid = os.urandom(8)
        self.server_sid: bytes | None = None
        self.replay_id = 0
        self.keys: dict[int, ClientKey] = {}
        self.peer_info = dict(PEER_INFO_26 if peer_info is None else peer_info)
        self.username, self.password, self.options = username, password, options
        self.data_in: list[bytes] = []
        self.data_dropped = 0
        self.extra_plaintext: bytes = b""  # sent right after km2 (own TLS record, same control packet)
        self.ignore_key_ids: set[int] = set()  # simulate a client that never answers these key ids

    # ------------------------------------------------------------ helpers
    @property
    def iv_proto(self) -> int:
        return int(self.peer_info.get("IV_PROTO", "0"))

    def key_method_2(self, ks: ClientKey) -> bytes:
        info = "".join(f"{k}={v}\n" for k, v in self.peer_info.items())
        return (b"\0\0\0\0\x02" + ks.pre_master + ks.random1 + ks.random2 + ovpn_string(self.options)
                + ovpn_string(self.username) + ovpn_string(self.password) + ovpn_string(info))

    def _new_key(self, key_id: int) -> ClientKey:
        conn = SSL.Connection(self.ctx, None)
        conn.set_connect_state()
        ks = ClientKey(key_id, conn)
        self.keys[key_id] = ks
        self._pump(ks)  # produces the ClientHello
        return ks

    def wrap_packet(self, packet: ControlPacket, now: float) -> bytes:
        self.replay_id += 1
        return self.wrap.wrap(packet.header(), packet.body(), self.replay_id, int(now))

    # ------------------------------------------------------------ protocol steps
    def reset(self, now: float = T0) -> bytes:
        ks = self._new_key(0)
        ks.send_id = 1  # the reset itself is reliable id 0
        return self.wrap_packet(ControlPacket(P_CONTROL_HARD_RESET_CLIENT_V2, 0, self.sid, [], None, 0, b""), now)

    def start_renegotiation(self, key_id: int) -> ClientKey:
        ks = self._new_key(key_id)
        ks.queue.insert(0, (P_CONTROL_SOFT_RESET_V1, b""))
        return ks

    def send_control_message(self, key_id: int, text: str) -> None:
        ks = self.keys[key_id]
        ks.tls.sendall(text.encode() + b"\0")

    def handle(self, datagram: bytes) -> None:
        op = datagram[0] >> 3
        key_id = datagram[0] & 7
        if op in DATA_OPCODES:
            ks = self.keys.get(key_id)
            plain = ks.data_key.decrypt(datagram) if ks is not None and ks.data_key is not None else None
            if plain is None:
                self.data_dropped += 1
            else:
                self.data_in.append(plain)
            return
        _, body = self.wrap.unwrap(datagram)
        opcode, key_id, sid = split_header(datagram)
        packet = parse_body(opcode, key_id, sid, body)
        if self.server_sid is None:
            assert opcode == P_CONTROL_HARD_RESET_SERVER_V2
            self.server_sid = packet.session_id
        assert packet.session_id == self.server_sid
        if packet.acks:
            assert packet.remote_session_id == self.sid
        if key_id in self.ignore_key_ids:
            return
        ks = self.keys.get(key_id)
        if ks is None:
            assert opcode == P_CONTROL_SOFT_RESET_V1, f"unexpected opcode {opcode} for new key id {key_id}"
            ks = self.start_renegotiation(key_id)  # the responder sends its own SOFT_RESET too (ovpn26)
        ks.acked_by_server.update(packet.acks)
        for pid in packet.acks:
            ks.unacked.pop(pid, None)
        if packet.packet_id is None:
            return
        if packet.packet_id not in ks.acks:
            ks.acks.append(packet.packet_id)
        if packet.packet_id >= ks.expected:
            ks.buffer[packet.packet_id] = (opcode, packet.payload)
        while ks.expected in ks.buffer:
            op, payload = ks.buffer.pop(ks.expected)
            ks.expected += 1
            if op == P_CONTROL_V1:
                ks.tls.bio_write(payload)
                self._pump(ks)

    def _pump(self, ks: ClientKey) -> None:
        if ks.tls_error is not None:
            return
        if not ks.handshake_done:
            try:
                ks.tls.do_handshake()
                ks.handshake_done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                ks.tls_error = exc
                return
        if ks.handshake_done and not ks.km2_sent:
            ks.tls.sendall(self.key_method_2(ks))
            if self.extra_plaintext:
                ks.tls.sendall(self.extra_plaintext)  # a second TLS record, same control packet
            ks.km2_sent = True
        if ks.handshake_done:
            while True:
                try:
                    chunk = ks.tls.recv(65536)
                except (SSL.WantReadError, SSL.ZeroReturnError):
                    break
                except SSL.Error as exc:
                    ks.tls_error = exc
                    break
                if not chunk:
                    break
                ks.plain += chunk
        if ks.server_km2 is None:
            parsed = parse_server_km2(bytes(ks.plain))
            if parsed is not None:
                ks.server_km2 = parsed[:3]
                del ks.plain[: parsed[3]]
        if ks.server_km2 is not None:
            while b"\0" in ks.plain:
                raw, _, rest = bytes(ks.plain).partition(b"\0")
                ks.plain[:] = rest
                ks.messages.append(raw.decode())

    def outgoing(self, now: float) -> list[bytes]:
        out = []
        for ks in list(self.keys.values()):
            if ks.key_id in self.ignore_key_ids:
                continue
            records = b""
            while True:
                try:
                    chunk = ks.tls.bio_read(65536)
                except SSL.WantReadError:
                    break
                if not chunk:
                    break
                records += chunk
            for i in range(0, len(records), 1000):
                ks.queue.append((P_CONTROL_V1, records[i : i + 1000]))
            while ks.queue:
                op, payload = ks.queue.pop(0)
                acks, ks.acks = ks.acks[:4], ks.acks[4:]
                packet = ControlPacket(op, ks.key_id, self.sid, acks, self.server_sid if acks else None,
                                       ks.send_id, payload)
                ks.unacked[ks.send_id] = (op, payload)
                ks.send_id += 1
                out.append(self.wrap_packet(packet, now))
            while ks.acks:
                acks, ks.acks = ks.acks[:8], ks.acks[8:]
                out.append(self.wrap_packet(ControlPacket(P_ACK_V1, ks.key_id, self.sid, acks, self.server_sid),
                                            now))
        return out

    def retransmit(self, now: float) -> list[bytes]:
        """Everything the server has not acknowledged yet, again (same reliable ids)."""
        out = []
        for ks in self.keys.values():
            for pid, (op, payload) in sorted(ks.unacked.items()):
                if op == P_CONTROL_HARD_RESET_CLIENT_V2:
                    continue
                out.append(self.wrap_packet(ControlPacket(op, ks.key_id, self.sid, [], None, pid, payload), now))
        return out

    # ------------------------------------------------------------ data channel
    def derive_data_key(self, key_id: int, cipher: str, peer_id: int) -> DataKey:
        ks = self.keys[key_id]
        if self.iv_proto & 8:  # IV_PROTO_TLS_KEY_EXPORT -> the server pushes tls-ekm
            key2 = Key2(ks.tls.export_keying_material(b"EXPORTER-OpenVPN-datakeys", 256))
        else:
            r1, r2, _ = ks.server_km2
            key2 = KeySource(ks.pre_master, ks.random1, ks.random2, r1, r2).legacy_key2(self.sid, self.server_sid)
        ks.data_key = DataKey(cipher, key2, key_id, peer_id, server=False, data_v2=bool(self.iv_proto & 2))
        return ks.data_key

    def all_messages(self) -> list[str]:
        return [m for ks in self.keys.values() for m in ks.messages]


def parse_push_reply(messages: list[str]) -> dict[str, str]:
    replies = [m for m in messages if m.startswith("PUSH_REPLY,")]
    assert len(replies) == 1, messages
    opts = replies[0].split(",")[1:]
    parsed = {}
    for opt in opts:
        name, _, value = opt.partition(" ")
        parsed.setdefault(name, value)
    parsed["__order__"] = ",".join(o.split(" ")[0] for o in opts)
    return parsed


# =========================================================================== harness
@pytest.fixture(scope="module")
def pki():
    return make_pki("client1")


@pytest.fixture(scope="module")
def server_ctx(pki):
    return build_server_context(pki.server_cert, pki.server_key, [], [pki.ca_cert])


@pytest.fixture(scope="module")
def static_key() -> Key2:
    return parse_static_key(TEST_PKT_STATIC_KEY)


NETWORK = ClientNetworkConfig(
    address=ipaddress.IPv4Address("10.8.0.2"),
    network=ipaddress.IPv4Network("10.8.0.0/24"),
    gateway=ipaddress.IPv4Address("10.8.0.1"),
    routes=[ipaddress.IPv4Network("10.0.0.0/8")],
    dns_servers=["10.0.0.53"],
)


class Harness:
    def __init__(self, pki, server_ctx, static_key, *, wrap_kind="tls-crypt", transport="udp",
                 settings: SessionSettings | None = None, **client_kw):
        if wrap_kind == "tls-crypt":
            server_wrap, client_wrap = TlsCrypt(static_key, server=True), TlsCrypt(static_key, server=False)
        else:
            server_wrap, client_wrap = TlsAuth(static_key, "sha1", server=True), TlsAuth(static_key, "sha1",
                                                                                         server=False)
        self.settings = settings or SessionSettings()
        self.peer_ids_allocated = 0

        def allocate():
            self.peer_ids_allocated += 1
            return PEER_ID

        self.listener = OpenVPNListener(self.settings, server_wrap, lambda: server_ctx, allocate)
        self.client = OvpnTestClient(pki, client_wrap, **client_kw)
        self.transport = transport
        self.session = None
        self.events: list[ev.Event] = []
        self.now = T0

    def drain_events(self) -> list[ev.Event]:
        while (e := self.session.next_event()) is not None:
            self.events.append(e)
        return self.events

    def of(self, kind) -> list:
        self.drain_events()
        return [e for e in self.events if isinstance(e, kind)]

    def exchange(self, rounds: int = 60) -> None:
        for _ in range(rounds):
            moved = False
            for d in self.session.datagrams_to_send():
                self.client.handle(d)
                moved = True
            for d in self.client.outgoing(self.now):
                self.session.receive_control(d, self.now)
                moved = True
            if not moved:
                break
        self.drain_events()

    def connect(self) -> ev.AuthRequest:
        reset = self.client.reset(self.now)
        if self.transport == "udp":
            verdict = self.listener.udp_packet(reset, ADDR, self.now)
            assert verdict.session is None and verdict.reply is not None, verdict.drop_reason
            assert self.peer_ids_allocated == 0  # the first packet creates no state
            self.client.handle(verdict.reply)
            first, *rest = self.client.outgoing(self.now)
            verdict = self.listener.udp_packet(first, ADDR, self.now)
            assert verdict.session is not None, verdict.drop_reason
            self.session = verdict.session
            for d in rest:
                self.session.receive_control(d, self.now)
        else:
            verdict = self.listener.tcp_first_packet(reset, self.now)
            assert verdict.session is not None and verdict.reply is not None, verdict.drop_reason
            self.session = verdict.session
            self.client.handle(verdict.reply)
            for d in self.client.outgoing(self.now):
                self.session.receive_control(d, self.now)
        self.exchange()
        requests = self.of(ev.AuthRequest)
        assert requests, self.events
        return requests[-1]

    def establish(self, network=NETWORK) -> dict[str, str]:
        req = self.connect()
        self.session.authorize(req.key_id, network, now=self.now)
        self.exchange()
        push = parse_push_reply(self.client.keys[0].messages)
        self.client.derive_data_key(0, push["cipher"], int(push.get("peer-id", "16777215")))
        return push

    def tick(self, until: float, step: float = 10.0, *, client_key_id: int | None = None) -> None:
        """Advance the fake clock, the client sending a keepalive each step (so ping-restart stays quiet)."""
        while self.now < until:
            self.now = min(until, self.now + step)
            kid = client_key_id if client_key_id is not None else max(
                k for k, ks in self.client.keys.items() if ks.data_key is not None)
            self.session.decrypt(self.client.keys[kid].data_key.encrypt(KEEPALIVE_PING))
            self.session.handle_timer(self.now)
            self.exchange()


@pytest.fixture
def harness(pki, server_ctx, static_key):
    def make(**kw) -> Harness:
        return Harness(pki, server_ctx, static_key, **kw)

    return make


# =========================================================================== the full handshake
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("wrap_kind", ["tls-crypt", "tls-auth"])
def test_full_handshake_and_data(harness, wrap_kind, transport):
    h = harness(wrap_kind=wrap_kind, transport=transport)
    req = h.connect()
    assert req.key_id == 0 and not req.renegotiation
    assert req.username == "alice" and req.password == "s3cret"
    assert req.peer_info["IV_PROTO"] == "990" and req.peer_info["IV_VER"] == "2.6.12"
    assert req.peer_chain and req.peer_chain[0].subject.rfc4514_string() == "CN=client1"
    assert req.tls_version in ("TLSv1.2", "TLSv1.3")
    ks0 = h.client.keys[0]
    assert ks0.server_km2 is not None  # the server answered key-method-2 before the auth decision
    options = ks0.server_km2[2]
    assert options.startswith("V4,dev-type tun,") and options.endswith(",tls-server")
    assert ("proto TCPv4_SERVER" if transport == "tcp" else "proto UDPv4") in options
    assert not h.of(ev.Established)
    assert h.session.encrypt(IP_DOWN) is None  # no data key before authorization

    h.session.authorize(0, NETWORK, now=h.now)
    h.exchange()
    established = h.of(ev.Established)
    assert len(established) == 1 and established[0].cipher == "AES-256-GCM"

    push = parse_push_reply(ks0.messages)
    order = push["__order__"].split(",")
    assert order.index("topology") < order.index("ifconfig")
    assert push["topology"] == "subnet"
    assert push["ifconfig"] == "10.8.0.2 255.255.255.0"
    assert push["route-gateway"] == "10.8.0.1"
    assert push["route"] == "10.0.0.0 255.0.0.0"
    assert push["dhcp-option"] == "DNS 10.0.0.53"
    assert push["peer-id"] == str(PEER_ID)
    assert push["cipher"] == "AES-256-GCM"
    assert push["protocol-flags"] == "cc-exit tls-ekm"  # IV_PROTO 990 has CC_EXIT_NOTIFY and TLS_KEY_EXPORT
    assert push["ping"] == "10" and push["ping-restart"] == "60"
    assert push["tun-mtu"] == "1500"  # the client sent IV_MTU
    assert "push-continuation" not in push

    key = h.client.derive_data_key(0, push["cipher"], int(push["peer-id"]))
    up = key.encrypt(IP_UP)
    assert up[:4] == bytes([9 << 3, 0, 0, PEER_ID])
    assert h.session.decrypt(up) == IP_UP
    assert h.session.decrypt(up) is None  # replay
    down = h.session.encrypt(IP_DOWN)
    assert down[0] == 9 << 3 and int.from_bytes(down[1:4], "big") == PEER_ID
    assert key.decrypt(down) == IP_DOWN
    for i in range(50):
        assert h.session.decrypt(key.encrypt(IP_UP + bytes([i]))) == IP_UP + bytes([i])
        assert key.decrypt(h.session.encrypt(IP_DOWN + bytes([i]))) == IP_DOWN + bytes([i])
    assert h.session.packets_in == 51 and h.session.bytes_in == sum(len(IP_UP) + (i > 0) for i in range(51))


def test_handshake_over_tls_1_2(harness):
    h = harness(tls_max=SSL.TLS1_2_VERSION)
    req = h.connect()
    assert req.tls_version == "TLSv1.2"
    h.session.authorize(req.key_id, NETWORK, now=h.now)
    h.exchange()
    push = parse_push_reply(h.client.keys[0].messages)
    key = h.client.derive_data_key(0, push["cipher"], int(push["peer-id"]))  # RFC 5705 exporter on TLS 1.2
    assert h.session.decrypt(key.encrypt(IP_UP)) == IP_UP
    assert key.decrypt(h.session.encrypt(IP_DOWN)) == IP_DOWN


@pytest.mark.parametrize("seed", range(3))
def test_handshake_over_a_lossy_reordering_link(harness, seed):
    """30 % loss and reordering both ways once the session exists: retransmissions get it through."""
    import random

    rng = random.Random(seed)
    h = harness()
    reset = h.client.reset(h.now)
    h.client.handle(h.listener.udp_packet(reset, ADDR, h.now).reply)
    first, *rest = h.client.outgoing(h.now)
    h.session = h.listener.udp_packet(first, ADDR, h.now).session
    for d in rest:
        h.session.receive_control(d, h.now)

    def lossy(datagrams):
        kept = [d for d in datagrams if rng.random() >= 0.3]
        rng.shuffle(kept)
        return kept

    authorized = False
    for _ in range(400):
        h.now += 0.5
        h.session.handle_timer(h.now)
        for d in lossy(h.session.datagrams_to_send()):
            h.client.handle(d)
        out = h.client.outgoing(h.now)
        if int(h.now * 2) % 4 == 0:
            out += h.client.retransmit(h.now)
        for d in lossy(out):
            h.session.receive_control(d, h.now)
        h.drain_events()
        if not authorized and h.of(ev.AuthRequest):
            h.session.authorize(0, NETWORK, now=h.now)
            authorized = True
        if any(m.startswith("PUSH_REPLY") for m in h.client.keys[0].messages):
            break
    assert not h.session.closed, h.of(ev.SessionClosed)
    assert len(h.of(ev.AuthRequest)) == 1  # duplicates never re-run key-method-2
    push = parse_push_reply(h.client.keys[0].messages)
    key = h.client.derive_data_key(0, push["cipher"], int(push["peer-id"]))
    assert h.session.decrypt(key.encrypt(IP_UP)) == IP_UP


@pytest.mark.parametrize("cipher", ["AES-128-GCM", "CHACHA20-POLY1305"])
def test_negotiates_first_server_cipher_the_client_offers(harness, cipher):
    info = dict(PEER_INFO_26, IV_CIPHERS=f"{cipher}:BF-CBC")
    h = harness(peer_info=info)
    push = h.establish()
    assert push["cipher"] == cipher
    assert h.of(ev.Established)[0].cipher == cipher
    key = h.client.keys[0].data_key
    assert h.session.decrypt(key.encrypt(IP_UP)) == IP_UP
    assert key.decrypt(h.session.encrypt(IP_DOWN)) == IP_DOWN


def test_legacy_prf_keys_and_p_data_v1_for_an_old_client(harness):
    # no IV_PROTO at all: no TLS-EKM (legacy PRF over the km2 randoms), no peer-id (P_DATA_V1), no push request
    info = {"IV_VER": "2.4.12", "IV_NCP": "2", "IV_PLAT": "win"}
    h = harness(peer_info=info)
    req = h.connect()
    h.session.authorize(req.key_id, NETWORK, now=h.now)
    h.exchange()
    assert not any(m.startswith("PUSH_REPLY") for m in h.client.all_messages())  # must ask first
    h.client.send_control_message(0, "PUSH_REQUEST")
    h.exchange()
    push = parse_push_reply(h.client.keys[0].messages)
    assert "peer-id" not in push and "protocol-flags" not in push and "key-derivation" not in push
    assert push["cipher"] == "AES-256-GCM"
    key = h.client.derive_data_key(0, push["cipher"], 0xFFFFFF)
    up = key.encrypt(IP_UP)
    assert up[0] == 6 << 3  # P_DATA_V1
    assert h.session.decrypt(up) == IP_UP
    down = h.session.encrypt(IP_DOWN)
    assert down[0] == 6 << 3
    assert key.decrypt(down) == IP_DOWN


def test_ekm_without_cc_exit_pushes_key_derivation(harness):
    h = harness(peer_info=dict(PEER_INFO_26, IV_PROTO=str(2 | 4 | 8)))
    push = h.establish()
    assert push["key-derivation"] == "tls-ekm" and "protocol-flags" not in push
    key = h.client.keys[0].data_key
    assert h.session.decrypt(key.encrypt(IP_UP)) == IP_UP


def test_push_request_before_and_after_authorization(harness):
    h = harness(peer_info=dict(PEER_INFO_26, IV_PROTO=str(2 | 8)))  # no REQUEST_PUSH bit
    req = h.connect()
    h.client.send_control_message(0, "PUSH_REQUEST")  # while the decision is pending: remembered
    h.exchange()
    assert not any(m.startswith("PUSH_REPLY") for m in h.client.all_messages())
    h.session.authorize(req.key_id, NETWORK, now=h.now)
    h.exchange()
    assert sum(m.startswith("PUSH_REPLY") for m in h.client.keys[0].messages) == 1
    h.now += 5
    h.client.send_control_message(0, "PUSH_REQUEST")  # a repeat within 30 s is ignored
    h.exchange()
    assert sum(m.startswith("PUSH_REPLY") for m in h.client.keys[0].messages) == 1
    h.now += 31
    h.client.send_control_message(0, "PUSH_REQUEST")
    h.exchange()
    assert sum(m.startswith("PUSH_REPLY") for m in h.client.keys[0].messages) == 2


def test_control_message_coalesced_with_key_method_2_is_not_lost(harness):
    # regression: _tls_input used to hand the whole first plaintext read to parse_client_key_method_2 and
    # clear it, losing a control message in a later TLS record of the same control packet
    h = harness(peer_info=dict(PEER_INFO_26, IV_PROTO=str(2 | 8)))  # no REQUEST_PUSH: must ask
    h.client.extra_plaintext = b"PUSH_REQUEST\0"
    req = h.connect()
    h.session.authorize(req.key_id, NETWORK, now=h.now)
    h.exchange()
    assert any(m.startswith("PUSH_REPLY") for m in h.client.keys[0].messages)


def test_many_routes_arrive_as_continuation_messages(harness):
    network = ClientNetworkConfig(
        address=NETWORK.address, network=NETWORK.network, gateway=NETWORK.gateway,
        routes=[ipaddress.IPv4Network(f"10.{i}.0.0/16") for i in range(120)],
    )
    h = harness()
    req = h.connect()
    h.session.authorize(req.key_id, network, now=h.now)
    h.exchange()
    replies = [m for m in h.client.keys[0].messages if m.startswith("PUSH_REPLY,")]
    assert len(replies) >= 3
    assert all(r.endswith(",push-continuation 2") for r in replies[:-1])
    assert replies[-1].endswith(",push-continuation 1")
    routes = [o for r in replies for o in r.split(",") if o.startswith("route ")]
    assert len(routes) == 120


def test_no_common_cipher_is_refused(harness):
    h = harness(peer_info=dict(PEER_INFO_26, IV_CIPHERS="BF-CBC:AES-256-CBC"))
    req = h.connect()
    h.session.authorize(req.key_id, NETWORK, now=h.now)
    h.exchange()
    failed = h.of(ev.AuthFailed)
    assert failed and "cipher" in failed[0].reason
    assert not h.of(ev.Established)
    assert h.session.encrypt(IP_DOWN) is None
    h.session.handle_timer(h.now + 2)
    assert h.session.closed


def test_no_common_cipher_auth_failed_reaches_the_client(harness):
    # regression: authorize() returned after _deny() without _flush(), so this AUTH_FAILED never left
    h = harness(peer_info=dict(PEER_INFO_26, IV_CIPHERS="BF-CBC:AES-256-CBC"))
    req = h.connect()
    h.session.authorize(req.key_id, NETWORK, now=h.now)
    h.exchange()
    h.session.handle_timer(h.session.timer())  # the next timer is the close linger
    h.exchange()
    failed = [m for m in h.client.keys[0].messages if m.startswith("AUTH_FAILED")]
    assert failed and "cipher" in failed[0]


# =========================================================================== deny / spoofing / misc
def test_deny_sends_auth_failed_and_closes(harness):
    h = harness()
    req = h.connect()
    h.session.deny(req.key_id, "bad credentials", h.now)
    h.exchange()
    assert h.client.keys[0].messages == ["AUTH_FAILED,bad credentials"]
    assert [e.reason for e in h.of(ev.AuthFailed)] == ["bad credentials"]
    assert not h.session.closed  # lingers so the message can be (re)transmitted
    assert h.session.timer() <= h.now + 2.0
    h.session.handle_timer(h.now + 2.0)
    assert h.session.closed and h.of(ev.SessionClosed)
    assert h.session.encrypt(IP_DOWN) is None
    h.session.authorize(req.key_id, NETWORK, now=h.now + 3)  # too late: ignored
    assert not h.of(ev.Established)


def test_spoofed_second_packets_create_no_session(harness):
    h = harness()
    reset = h.client.reset(h.now)
    verdict = h.listener.udp_packet(reset, ADDR, h.now)
    h.client.handle(verdict.reply)
    good = h.client.outgoing(h.now)[0]
    cookie = h.client.server_sid
    client_wrap = h.client.wrap

    def second(sid=h.client.sid, remote=cookie, acks=(0,), pid=1, key_id=0, opcode=P_CONTROL_V1) -> bytes:
        pkt = ControlPacket(opcode, key_id, sid, list(acks), remote, None if opcode == P_ACK_V1 else pid,
                            b"" if opcode == P_ACK_V1 else b"\x16\x03\x01")
        return client_wrap.wrap(pkt.header(), pkt.body(), 5, int(h.now))

    attempts = {
        "random cookie": (second(remote=os.urandom(8)), ADDR, h.now),
        "other address": (good, ("198.51.100.8", 40001), h.now),
        "other port": (good, (ADDR[0], 40002), h.now),
        "other client sid": (second(sid=os.urandom(8)), ADDR, h.now),
        "expired": (good, ADDR, h.now + 3 * 30 + 1),
        "ack beyond our reset": (second(acks=(5,)), ADDR, h.now),
        "message id beyond 1": (second(pid=7), ADDR, h.now),
        "no ack": (second(acks=()), ADDR, h.now),
        "key id 1": (second(key_id=1), ADDR, h.now),
        "unauthenticated": (good[:-1] + bytes([good[-1] ^ 1]), ADDR, h.now),
    }
    for name, (data, addr, now) in attempts.items():
        verdict = h.listener.udp_packet(data, addr, now)
        assert verdict.session is None and verdict.reply is None, name
        assert verdict.drop_reason, name
    assert h.peer_ids_allocated == 0
    # the genuine packet still works, also as a bare ACK
    ack_only = second(opcode=P_ACK_V1)
    verdict = h.listener.udp_packet(ack_only, ADDR, h.now + 31)
    assert verdict.session is not None and h.peer_ids_allocated == 1


def test_unwanted_first_packets(harness, static_key):
    h = harness()
    for data in (b"", b"\x48" + b"\0" * 40, b"\x30" + b"\0" * 40, b"\x18" + b"\0" * 60, b"\x50" + b"\0" * 400):
        verdict = h.listener.udp_packet(data, ADDR, h.now)
        assert verdict.session is None and verdict.reply is None and verdict.drop_reason
    assert h.listener.tcp_first_packet(b"\x20" + b"\0" * 60, h.now).drop_reason
    assert h.listener.tcp_first_packet(b"", h.now).drop_reason


def test_reset_rate_limit(harness):
    h = harness()
    h.listener.reset_limiter.tokens = 2
    h.listener.reset_limiter.stamp = h.now
    replies = [h.listener.udp_packet(h.client.reset(h.now), ADDR, h.now).reply for _ in range(3)]
    assert replies[0] is not None and replies[1] is not None and replies[2] is None


def test_server_reset_reply_layout(harness):
    h = harness()
    verdict = h.listener.udp_packet(h.client.reset(h.now), ADDR, h.now)
    replay_id, body = h.client.wrap.unwrap(verdict.reply)
    assert replay_id == 1
    opcode, key_id, sid = split_header(verdict.reply)
    packet = parse_body(opcode, key_id, sid, body)
    assert (opcode, key_id) == (P_CONTROL_HARD_RESET_SERVER_V2, 0)
    assert packet.acks == [0] and packet.remote_session_id == h.client.sid and packet.packet_id == 0
    # stateless: the same reset in the same time slot gets the same server session id
    again = h.listener.udp_packet(h.client.wrap_packet(
        ControlPacket(P_CONTROL_HARD_RESET_CLIENT_V2, 0, h.client.sid, [], None, 0, b""), h.now), ADDR, h.now + 1)
    assert split_header(again.reply)[2] == sid


def test_retransmitted_reset_and_replayed_packets_in_session(harness):
    h = harness()
    h.connect()
    h.session.datagrams_to_send()
    again = h.client.wrap_packet(ControlPacket(P_CONTROL_HARD_RESET_CLIENT_V2, 0, h.client.sid, [], None, 0, b""),
                                 h.now)
    h.session.receive_control(again, h.now)
    out = h.session.datagrams_to_send()
    assert len(out) == 1
    _, body = h.client.wrap.unwrap(out[0])
    packet = parse_body(*split_header(out[0]), body)
    assert packet.opcode == P_ACK_V1 and packet.acks == [0]
    drops = h.session.drops
    h.session.receive_control(again, h.now)  # the very same datagram again: replayed wrap id
    assert h.session.drops == drops + 1 and h.session.datagrams_to_send() == []
    assert any("replay" in e.reason for e in h.of(ev.PacketDropped))


def test_control_packet_with_foreign_session_ids_dropped(harness):
    h = harness()
    h.connect()
    for pkt in (
        ControlPacket(P_CONTROL_V1, 0, os.urandom(8), [], None, 50, b"x"),
        ControlPacket(P_ACK_V1, 0, h.client.sid, [1], os.urandom(8)),
    ):
        drops = h.session.drops
        h.session.receive_control(h.client.wrap_packet(pkt, h.now), h.now)
        assert h.session.drops == drops + 1
    assert h.session.datagrams_to_send() == []


def test_hand_window_expiry_closes_unauthenticated_session(harness):
    h = harness()
    h.connect()  # never authorized
    assert h.session.timer() <= h.now + 60
    h.session.handle_timer(h.now + 59)
    assert not h.session.closed
    h.session.handle_timer(h.now + 60)
    assert h.session.closed
    assert "hand-window" in h.of(ev.SessionClosed)[0].reason


def test_tls_failure_with_untrusted_client_certificate(harness, pki, server_ctx, static_key):
    other = make_pki("mallory", ca_cn="Another CA")  # a client certificate from another CA
    h = Harness(other, server_ctx, static_key)
    h.client.ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(pki.ca_cert))  # trusts our server
    reset = h.client.reset(h.now)
    verdict = h.listener.udp_packet(reset, ADDR, h.now)
    h.client.handle(verdict.reply)
    first, *rest = h.client.outgoing(h.now)  # a post-quantum key share makes the ClientHello 2 packets
    h.session = h.listener.udp_packet(first, ADDR, h.now).session
    for d in rest:
        h.session.receive_control(d, h.now)
    h.exchange()
    failed = h.of(ev.HandshakeFailed)
    assert failed and "certificate" in failed[0].reason.lower()
    assert not h.of(ev.AuthRequest)
    h.session.handle_timer(h.now + 2)
    assert h.session.closed


# =========================================================================== keepalive / exit
def test_keepalive_ping_and_ping_restart(harness):
    h = harness()
    h.establish()
    h.session.datagrams_to_send()
    h.session.handle_timer(h.now + 10)  # nothing sent for `ping` seconds -> keepalive
    out = h.session.datagrams_to_send()
    assert len(out) == 1
    h.client.handle(out[0])
    assert h.client.data_in[-1] == KEEPALIVE_PING
    assert h.session.decrypt(h.client.keys[0].data_key.encrypt(KEEPALIVE_PING)) == b""  # consumed, not for the TUN
    # the client falls silent: the server gives up after 2 x ping-restart
    t = h.now + 10
    while not h.session.closed and t < h.now + 400:
        t += 10
        h.session.handle_timer(t)
    assert h.session.closed and t - h.now <= 10 + 2 * 60 + 10
    assert "ping-restart" in h.of(ev.SessionClosed)[0].reason


def test_client_exit_control_message(harness):
    h = harness()
    h.establish()
    h.client.send_control_message(0, "EXIT")
    h.exchange()
    assert h.of(ev.ClientExit) and h.session.closed


def test_explicit_exit_notify_over_data_channel(harness):
    h = harness()
    h.establish()
    assert h.session.decrypt(h.client.keys[0].data_key.encrypt(OCC_MAGIC + b"\x06")) == b""
    assert h.of(ev.ClientExit)
    h.session.handle_timer(h.now + 0.1)
    assert h.session.closed


def test_disconnect_sends_restart(harness):
    h = harness()
    h.establish()
    # the memory BIOs were swapped for empty ones after the handshake: TLS goes on working
    assert h.session.primary.tls._bios_renewed
    h.session.disconnect(h.now, "HALT")
    h.exchange()
    assert h.client.keys[0].messages[-1] == "HALT"
    h.session.handle_timer(h.now + 2)
    assert h.session.closed


def test_unknown_control_message_becomes_event(harness):
    h = harness()
    h.establish()
    h.client.send_control_message(0, "INFO,something new")
    h.exchange()
    assert [e.text for e in h.of(ev.ControlMessage)] == ["INFO,something new"]


def test_pending_auth_with_challenge_and_response(harness):
    h = harness(peer_info=dict(PEER_INFO_26, IV_SSO="crtext"))
    req = h.connect()
    assert h.session.sso_methods == {"crtext"}
    h.session.pending(req.key_id, h.now, timeout=120, challenge="Enter your one-time code")
    h.exchange()
    assert h.client.keys[0].messages[-2:] == ["AUTH_PENDING,timeout 120", "INFO_PRE,CR_TEXT:R:Enter your one-time code"]
    h.session.handle_timer(h.now + 90)  # beyond hand-window (60 s) but within the pending timeout
    assert not h.session.closed
    h.client.send_control_message(0, "CR_RESPONSE,MTIzNDU2")
    h.exchange()
    assert [e.response for e in h.of(ev.ChallengeResponse)] == ["123456"]
    h.session.authorize(req.key_id, NETWORK, now=h.now)
    h.exchange()
    assert any(m.startswith("PUSH_REPLY") for m in h.client.keys[0].messages)


# =========================================================================== renegotiation
def test_client_initiated_renegotiation(harness):
    h = harness(settings=SessionSettings(reneg_sec=0, transition_window=60))
    h.establish()
    old = h.client.keys[0].data_key
    h.now += 100
    h.client.start_renegotiation(1)
    h.exchange()
    started = h.of(ev.RenegotiationStarted)
    assert [(e.key_id, e.by_client) for e in started] == [(1, True)]
    req = h.of(ev.AuthRequest)[-1]
    assert req.key_id == 1 and req.renegotiation
    assert h.client.keys[1].server_km2 is not None
    # until the new key is authorized, the server keeps sending with the old key and still accepts it
    assert h.session.decrypt(old.encrypt(IP_UP)) == IP_UP
    down = h.session.encrypt(IP_DOWN)
    assert down[0] & 7 == 0 and old.decrypt(down) == IP_DOWN
    assert not h.of(ev.Renegotiated)
    # a client switches to the new key once it has our key-method-2 reply: the server already decrypts it
    new = h.client.derive_data_key(1, "AES-256-GCM", PEER_ID)
    assert h.session.decrypt(new.encrypt(IP_UP)) == IP_UP

    h.session.authorize(1, now=h.now)
    h.exchange()
    assert [e.key_id for e in h.of(ev.Renegotiated)] == [1]
    assert not any(m.startswith("PUSH_REPLY") for m in h.client.keys[1].messages)  # config is not re-pushed
    down = h.session.encrypt(IP_DOWN)
    assert down[0] == (9 << 3 | 1)  # TX switched to the new key
    assert new.decrypt(down) == IP_DOWN
    assert h.session.decrypt(new.encrypt(IP_UP)) == IP_UP
    assert h.session.decrypt(old.encrypt(IP_UP)) == IP_UP  # lame duck still accepted
    # ... until the transition window is over
    h.tick(h.now + 61, client_key_id=1)
    assert not h.session.closed
    assert h.session.decrypt(old.encrypt(IP_UP)) is None
    assert h.session.decrypt(new.encrypt(IP_UP)) == IP_UP


def test_server_initiated_renegotiation_on_reneg_sec(harness):
    h = harness(settings=SessionSettings(reneg_sec=300, transition_window=60))
    h.establish()
    t_established = h.now
    assert h.session.timer() <= t_established + 10
    h.tick(t_established + 290)
    assert not h.of(ev.RenegotiationStarted)
    h.tick(t_established + 300)
    started = h.of(ev.RenegotiationStarted)
    assert [(e.key_id, e.by_client) for e in started] == [(1, False)]
    # the client answered the server's SOFT_RESET with its own plus a new TLS session
    req = h.of(ev.AuthRequest)[-1]
    assert req.key_id == 1 and req.renegotiation
    old = h.client.keys[0].data_key
    assert old.decrypt(h.session.encrypt(IP_DOWN)) == IP_DOWN  # still the old key
    h.session.authorize(1, now=h.now)
    h.exchange()
    assert h.of(ev.Renegotiated)
    new = h.client.derive_data_key(1, "AES-256-GCM", PEER_ID)
    assert new.decrypt(h.session.encrypt(IP_DOWN)) == IP_DOWN
    assert h.session.decrypt(old.encrypt(IP_UP)) == IP_UP
    assert h.session.decrypt(new.encrypt(IP_UP)) == IP_UP
    # the next one is due reneg_sec after the new key became active, with key id 2
    h.tick(h.now + 299, client_key_id=1)
    assert len(h.of(ev.RenegotiationStarted)) == 1
    h.tick(h.now + 2, client_key_id=1)
    assert [e.key_id for e in h.of(ev.RenegotiationStarted)] == [1, 2]


def test_unanswered_server_renegotiation_keeps_the_session(harness):
    h = harness(settings=SessionSettings(reneg_sec=100, hand_window=60, transition_window=60))
    h.establish()
    h.client.ignore_key_ids = {1, 2}
    h.tick(h.now + 100, client_key_id=0)
    assert [e.key_id for e in h.of(ev.RenegotiationStarted)] == [1]
    h.tick(h.now + 70, client_key_id=0)  # the new key state times out after hand_window ...
    assert not h.session.closed
    key = h.client.keys[0].data_key
    assert h.session.decrypt(key.encrypt(IP_UP)) == IP_UP  # ... and the old key still works
    assert key.decrypt(h.session.encrypt(IP_DOWN)) == IP_DOWN
    assert [e.key_id for e in h.of(ev.RenegotiationStarted)][:2] == [1, 2]  # and it tries again


def test_failed_renegotiation_auth_keeps_old_key_until_close(harness):
    h = harness(settings=SessionSettings(reneg_sec=0))
    h.establish()
    h.now += 10
    h.client.start_renegotiation(1)
    h.exchange()
    h.session.deny(1, "token expired", h.now)
    h.exchange()
    assert h.client.keys[1].messages == ["AUTH_FAILED,token expired"]
    h.session.handle_timer(h.now + 2)
    assert h.session.closed


def test_crossing_soft_resets(harness):
    """Server and client start the same renegotiation at the same time: one key state, both SOFT_RESETs id 0."""
    h = harness(settings=SessionSettings(reneg_sec=300))
    h.establish()
    h.tick(h.now + 290)
    h.client.start_renegotiation(1)  # the client's own timer fires ...
    h.now += 10
    h.session.decrypt(h.client.keys[0].data_key.encrypt(KEEPALIVE_PING))
    h.session.handle_timer(h.now)  # ... and so does the server's
    h.exchange()
    assert [(e.key_id, e.by_client) for e in h.of(ev.RenegotiationStarted)] == [(1, False)]
    requests = [e for e in h.of(ev.AuthRequest) if e.key_id == 1]
    assert len(requests) == 1
    h.session.authorize(1, now=h.now)
    h.exchange()
    new = h.client.derive_data_key(1, "AES-256-GCM", PEER_ID)
    assert new.decrypt(h.session.encrypt(IP_DOWN)) == IP_DOWN


def test_renegotiation_when_data_packet_ids_near_wrap(harness):
    h = harness(settings=SessionSettings(reneg_sec=0))
    h.establish()
    h.session.data.tx_key.tx_packet_id = PACKET_ID_WRAP_TRIGGER
    h.session.handle_timer(h.now + 1)
    h.exchange()
    assert [(e.key_id, e.by_client) for e in h.of(ev.RenegotiationStarted)] == [(1, False)]


def test_encrypt_at_packet_id_exhaustion_does_not_raise(harness):
    h = harness(settings=SessionSettings(reneg_sec=0))
    h.establish()
    h.session.data.tx_key.tx_packet_id = 2**32 - 1  # every renegotiation attempt failed (client never answered)
    assert h.session.encrypt(IP_DOWN) is None


def test_retransmitted_soft_reset_during_pending_reauth_is_a_duplicate(harness):
    h = harness(settings=SessionSettings(reneg_sec=0))
    h.establish()
    h.now += 10
    h.client.start_renegotiation(1)
    h.exchange()
    assert [e.key_id for e in h.of(ev.AuthRequest)] == [0, 1]  # re-authentication pending (RADIUS, ...)
    # the server's ACK of the client's SOFT_RESET (id 0) was lost: the client sends it again after tls-timeout
    h.now += 2
    again = ControlPacket(P_CONTROL_SOFT_RESET_V1, 1, h.client.sid, [], None, 0, b"")
    h.session.receive_control(h.client.wrap_packet(again, h.now), h.now)
    h.exchange()
    assert len(h.of(ev.RenegotiationStarted)) == 1, "the renegotiation was restarted"
    h.session.authorize(1, now=h.now)
    h.exchange()
    assert h.of(ev.Renegotiated)
    new = h.client.derive_data_key(1, "AES-256-GCM", PEER_ID)
    assert new.decrypt(h.session.encrypt(IP_DOWN)) == IP_DOWN


def test_no_second_renegotiation_while_reauthorization_is_pending(harness):
    h = harness(settings=SessionSettings(reneg_sec=300))
    h.establish()
    h.tick(h.now + 300)
    assert [e.key_id for e in h.of(ev.RenegotiationStarted)] == [1]
    assert [e.key_id for e in h.of(ev.AuthRequest)] == [0, 1]  # the decision for key 1 is pending
    assert h.session.timer() > h.now  # nothing is due right now (no busy loop) ...
    h.now += 0.5
    h.session.handle_timer(h.now)  # ... and a timer firing anyway starts nothing new
    h.exchange()
    assert [e.key_id for e in h.of(ev.RenegotiationStarted)] == [1]


def test_eighth_client_renegotiation_reuses_key_id_1(harness):
    # regression: a SOFT_RESET for a key_id still held by a lame-duck key state used to be re-ACKed as a duplicate
    h = harness(settings=SessionSettings(reneg_sec=0, transition_window=3600))
    h.establish()
    key_ids = [1, 2, 3, 4, 5, 6, 7, 1]  # ovpn26: renegotiations use 1..7 and wrap to 1, never 0
    for n, key_id in enumerate(key_ids, start=1):
        h.now += 10
        h.client.start_renegotiation(key_id)
        h.exchange()
        requests = [e for e in h.of(ev.AuthRequest) if e.renegotiation]
        assert len(requests) == n, f"renegotiation {n} (key_id {key_id}) got no AuthRequest"
        h.session.authorize(key_id, now=h.now)
        h.exchange()
        new = h.client.derive_data_key(key_id, "AES-256-GCM", PEER_ID)
        assert new.decrypt(h.session.encrypt(IP_DOWN)) == IP_DOWN
        assert h.session.decrypt(new.encrypt(IP_UP)) == IP_UP


def test_soft_reset_before_authentication_is_ignored(harness):
    # regression: ovpn26 ssl.c honours P_CONTROL_SOFT_RESET_V1 only once the primary key is established
    h = harness()
    h.connect()
    h.client.start_renegotiation(1)
    h.exchange()
    assert not h.of(ev.RenegotiationStarted)
    assert not [e for e in h.of(ev.AuthRequest) if e.key_id == 1]


# =========================================================================== fuzzing an established session
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(
    st.one_of(
        st.binary(max_size=120),
        st.tuples(st.integers(0, 31), st.integers(0, 7), st.lists(st.integers(0, 2**32 - 1), max_size=9),
                  st.booleans(), st.integers(0, 2**32 - 1), st.binary(max_size=64)),
        st.tuples(st.sampled_from([6, 9]), st.integers(0, 7), st.binary(max_size=60)),
    ),
    max_size=12,
))
def test_established_session_survives_garbage(harness, items):
    h = harness()
    h.establish()
    key = h.client.keys[0].data_key
    for item in items:
        if isinstance(item, bytes):
            if item and item[0] >> 3 in DATA_OPCODES:
                assert h.session.decrypt(item) is None
            elif item:
                h.session.receive_control(item, h.now)
        elif len(item) == 3:  # a data packet with a plausible header and garbage after it
            op, kid, rest = item
            data = bytes([op << 3 | kid]) + rest
            assert h.session.decrypt(data) is None
        else:  # an authenticated control packet with arbitrary content
            op, kid, acks, own_remote, pid, payload = item
            remote = h.session.own_sid if own_remote else os.urandom(8)
            acks_blob = struct.pack(f"!B{len(acks)}I", len(acks), *acks) + (remote if acks else b"")
            body = acks_blob + struct.pack("!I", pid) + payload
            header = bytes([op << 3 | kid]) + h.client.sid
            h.client.replay_id += 1
            h.session.receive_control(h.client.wrap.wrap(header, body, h.client.replay_id, int(h.now)), h.now)
        for d in h.session.datagrams_to_send():
            try:
                h.client.handle(d)
            except (PacketError, AssertionError):
                pass  # the test client is strict about what it expects; the server is what we test
    if not h.session.closed and h.session.data.rx_keys[0] is not None:
        assert h.session.decrypt(key.encrypt(IP_UP)) == IP_UP


def test_moved_data_channel_keeps_only_key_specs_and_follows_renegotiation(harness):
    """Once a data worker serves the session (move_data), the control process holds no cipher
    contexts, never encrypts (the worker owns the packet-id counter), asks for keepalives, and
    reports every key-set change with specs a worker can rebuild working keys from."""
    h = harness(settings=SessionSettings(reneg_sec=0, transition_window=60, ping=10, ping_restart=60))
    h.establish()
    h.session.encrypt(IP_DOWN)
    row = StatsTable(4).row(1)
    h.session.move_data(row)
    assert row[PACKETS_OUT] == 1  # what was counted here carries over
    assert all(isinstance(k, KeySpec) for k in [*h.session.data.rx_keys, h.session.data.tx_key] if k is not None)
    assert h.session.encrypt(IP_DOWN) is None
    worker = DataChannel(row)  # what a worker builds from the specs it is sent
    worker.rx_keys[0] = worker.tx_key = DataKey.from_spec(h.session.data.tx_key.spec)
    old = h.client.keys[0].data_key
    assert old.decrypt(worker.encrypt(IP_DOWN)) == IP_DOWN
    assert worker.decrypt(old.encrypt(IP_UP)) == IP_UP and h.session.packets_in == 1

    h.drain_events()
    h.events.clear()
    for _ in range(2):  # the worker sent something in the first interval, nothing in the second
        h.now += 11
        h.session.handle_timer(h.now)
    # nothing was sent for a ping interval: the worker is asked to send the ping
    assert h.of(ev.KeepaliveDue) and not h.session.datagrams_to_send()

    h.client.start_renegotiation(1)
    h.exchange()
    h.session.authorize(h.of(ev.AuthRequest)[-1].key_id, now=h.now)
    h.exchange()
    assert h.of(ev.DataKeysChanged) and h.of(ev.Renegotiated)
    tx = h.session.data.tx_key
    assert isinstance(tx, KeySpec) and tx.key_id == 1
    new = h.client.derive_data_key(1, "AES-256-GCM", PEER_ID)
    rebuilt = DataKey.from_spec(tx.spec)
    assert new.decrypt(rebuilt.encrypt(IP_DOWN)) == IP_DOWN
    assert h.session.decrypt(new.encrypt(IP_UP)) is None  # never decrypted here either

    h.session.data_lost()  # the worker died: nothing may be sent with these keys again
    assert h.session.data.tx_key is None and not h.session.remote_data
