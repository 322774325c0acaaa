"""The sans-I/O OpenVPN client core (p2sgw.openvpn.client) against our own server core, in memory.

No sockets: a tiny "network" moves datagrams between OpenVPNClientSession and OpenVPNListener /
OpenVPNServerSession under a fake clock, optionally losing packets, and plays the gateway's part
(authorize or deny on AuthRequest).
"""

from __future__ import annotations

import ipaddress
import random

import pytest
from OpenSSL import SSL
from openvpn_vectors import TEST_PKT_STATIC_KEY, make_pki

from p2sgw.openvpn import events as ev
from p2sgw.openvpn.client import (
    DEFAULT_PEER_INFO,
    Connected,
    OpenVPNClientSession,
    PushReply,
    build_client_context,
    parse_server_key_method_2,
)
from p2sgw.openvpn.keys import KeySource, build_server_key_method_2
from p2sgw.openvpn.packets import PacketError
from p2sgw.openvpn.push import ClientNetworkConfig
from p2sgw.openvpn.server import OpenVPNListener
from p2sgw.openvpn.session import SessionSettings
from p2sgw.openvpn.static_key import parse_static_key
from p2sgw.openvpn.tls import build_server_context
from p2sgw.openvpn.tls_wrap import TlsAuth, TlsCrypt

T0 = 1_700_000_000.0
ADDR = ("198.51.100.7", 40001)
PEER_ID = 42
# 10.8.0.2 -> 10.0.0.1 and back (only the addresses matter to the cores)
IP_UP = bytes.fromhex("450000140000400040010000" "0a080002" "0a000001") + b"up"
IP_DOWN = bytes.fromhex("450000140000400040010000" "0a000001" "0a080002") + b"down"
NETWORK = ClientNetworkConfig(
    address=ipaddress.IPv4Address("10.8.0.2"),
    network=ipaddress.IPv4Network("10.8.0.0/24"),
    gateway=ipaddress.IPv4Address("10.8.0.1"),
    routes=[ipaddress.IPv4Network("10.0.0.0/8")],
    dns_servers=["10.0.0.53"],
)


@pytest.fixture(scope="module")
def pki():
    return make_pki("loadgen")


@pytest.fixture(scope="module")
def server_ctx(pki):
    return build_server_context(pki.server_cert, pki.server_key, [], [pki.ca_cert])


@pytest.fixture(scope="module")
def static_key():
    return parse_static_key(TEST_PKT_STATIC_KEY)


class Net:
    """Client core <-> listener/server core, with a fake clock and an optional lossy link."""

    def __init__(self, pki, server_ctx, static_key, *, wrap_kind="tls-crypt", settings=None, network=NETWORK,
                 deny: str | None = None, loss: float = 0.0, seed: int = 0, client_ctx=None, **client_kw):
        if wrap_kind == "tls-crypt":
            server_wrap, client_wrap = TlsCrypt(static_key, server=True), TlsCrypt(static_key, server=False)
        else:
            server_wrap = TlsAuth(static_key, "sha1", server=True)
            client_wrap = TlsAuth(static_key, "sha1", server=False)
        self.settings = settings or SessionSettings()
        self.listener = OpenVPNListener(self.settings, server_wrap, lambda: server_ctx, lambda: PEER_ID)
        self.now = T0
        ctx = client_ctx or build_client_context(pki.client_cert, pki.client_key, [pki.ca_cert],
                                                 tls_max=client_kw.pop("tls_max", None))
        self.client = OpenVPNClientSession(ctx, client_wrap, self.now, **client_kw)
        self.session = None
        self.network = network
        self.deny = deny
        self.rng = random.Random(seed)
        self.loss = loss
        self.server_events: list[ev.Event] = []
        self.client_events: list[ev.Event] = []
        self.server_in: list[bytes] = []  # IP packets the server core decrypted (for the TUN)
        self.client_in: list[bytes] = []
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.sent_up: list[bytes] = []  # every datagram the client produced
        self.cut_to_client = False  # drop everything the server sends

    # ---------------------------------------------------------------- moving packets
    def _lost(self) -> bool:
        return self.loss > 0 and self.rng.random() < self.loss

    def _collect(self) -> None:
        out = self.client.datagrams_to_send()
        self.sent_up += out
        self.to_server += out
        while (e := self.client.next_event()) is not None:
            self.client_events.append(e)
        if self.session is not None:
            while (e := self.session.next_event()) is not None:
                self.server_events.append(e)
                if isinstance(e, ev.AuthRequest):
                    if self.deny is not None:
                        self.session.deny(e.key_id, self.deny, self.now)
                    else:
                        self.session.authorize(e.key_id, self.network if not e.renegotiation else None, now=self.now)
            out = self.session.datagrams_to_send()
            self.to_client += [] if self.cut_to_client else out

    def _server_receive(self, data: bytes) -> None:
        if data[0] >> 3 in (6, 9):
            assert self.session is not None
            plain = self.session.decrypt(data)
            if plain:
                self.server_in.append(plain)
            return
        if self.session is None:
            verdict = self.listener.udp_packet(data, ADDR, self.now)
            if verdict.reply is not None and not self.cut_to_client:
                self.to_client.append(verdict.reply)
            if verdict.session is not None:
                self.session = verdict.session
            return
        self.session.receive_control(data, self.now)

    def pump(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            self._collect()
            if not self.to_server and not self.to_client:
                return
            up, self.to_server = self.to_server, []
            down, self.to_client = self.to_client, []
            for d in up:
                if not self._lost():
                    self._server_receive(d)
            for d in down:
                if not self._lost():
                    plain = self.client.receive(d, self.now)
                    if plain:
                        self.client_in.append(plain)
        raise AssertionError("the exchange did not settle")

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Let time pass in steps, firing both cores' timers and delivering what they send."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            t = self.client.timer()
            if t is not None and t <= self.now:
                self.client.handle_timer(self.now)
            if self.session is not None:
                t = self.session.timer()
                if t is not None and t <= self.now:
                    self.session.handle_timer(self.now)
            self.pump()

    def connect(self, timeout: float = 60) -> Connected:
        self.pump()
        waited = 0.0
        while not self.client.connected and not self.client.closed and waited < timeout:
            self.advance(1.0)
            waited += 1.0
        found = self.of(self.client_events, Connected)
        assert found, f"not connected: {self.client.close_reason or self.client_events}"
        return found[0]

    @staticmethod
    def of(events, kind) -> list:
        return [e for e in events if isinstance(e, kind)]

    def exchange_data(self) -> None:
        self.to_server.append(self.client.encrypt(IP_UP))
        self.pump()
        assert self.server_in[-1] == IP_UP
        self.to_client.append(self.session.encrypt(IP_DOWN))
        self.pump()
        assert self.client_in[-1] == IP_DOWN


# ============================================================================ handshake and data
@pytest.mark.parametrize("wrap_kind", ["tls-crypt", "tls-auth"])
def test_connects_to_our_server_and_moves_data(pki, server_ctx, static_key, wrap_kind):
    net = Net(pki, server_ctx, static_key, wrap_kind=wrap_kind)
    first = net.client.datagrams_to_send()
    assert len(first) == 1 and first[0][0] >> 3 == 7  # P_CONTROL_HARD_RESET_CLIENT_V2, key_id 0
    net.to_server += first
    connected = net.connect()
    push = connected.push
    assert push.address == ipaddress.IPv4Address("10.8.0.2")
    assert push.netmask == ipaddress.IPv4Address("255.255.255.0")
    assert push.route_gateway == ipaddress.IPv4Address("10.8.0.1")
    assert push.routes == [ipaddress.IPv4Network("10.0.0.0/8")]
    assert push.dns_servers == ["10.0.0.53"]
    assert push.peer_id == PEER_ID and net.client.peer_id == PEER_ID
    assert connected.cipher == "AES-256-GCM" and net.client.cipher == "AES-256-GCM"
    assert push.tls_ekm and push.cc_exit
    assert (push.ping, push.ping_restart) == (10, 60) and net.client.ping == 10
    assert connected.tls_version == "TLSv1.3"
    established = net.of(net.server_events, ev.Established)
    assert established and established[0].cipher == "AES-256-GCM"
    auth = net.of(net.server_events, ev.AuthRequest)[0]
    assert auth.username is None and auth.password is None
    for key in ("IV_VER", "IV_PROTO", "IV_CIPHERS", "IV_TCPNL", "IV_MTU"):
        assert auth.peer_info[key] == DEFAULT_PEER_INFO[key]
    assert auth.peer_chain[0] == pki.client_cert
    net.exchange_data()
    # the data packets are P_DATA_V2 with our peer-id
    packet = net.client.encrypt(IP_UP)
    assert packet[0] >> 3 == 9 and int.from_bytes(packet[1:4], "big") == PEER_ID
    assert net.session.bytes_in == len(IP_UP) and net.client.bytes_in == len(IP_DOWN)


def test_tls_1_2(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key, tls_max=SSL.TLS1_2_VERSION)
    assert net.connect().tls_version == "TLSv1.2"
    net.exchange_data()


def test_legacy_prf_client_asks_for_the_push_and_uses_p_data_v1(pki, server_ctx, static_key):
    """An old client (IV_PROTO without TLS-EKM, REQUEST_PUSH or DATA_V2): PRF keys, explicit PUSH_REQUEST."""
    net = Net(pki, server_ctx, static_key, peer_info={"IV_VER": "2.4.9", "IV_NCP": "2", "IV_PROTO": "0"})
    connected = net.connect()
    assert not connected.push.tls_ekm and connected.push.peer_id is None
    net.exchange_data()
    assert net.client.encrypt(IP_UP)[0] >> 3 == 6  # P_DATA_V1


@pytest.mark.parametrize("cipher", ["CHACHA20-POLY1305", "AES-128-GCM"])
def test_pushed_cipher_is_used(pki, server_ctx, static_key, cipher):
    net = Net(pki, server_ctx, static_key, peer_info={**DEFAULT_PEER_INFO, "IV_CIPHERS": cipher})
    assert net.connect().cipher == cipher
    net.exchange_data()


@pytest.mark.parametrize("seed", range(6))
def test_handshake_over_a_lossy_link(pki, server_ctx, static_key, seed):
    """30 % loss both ways: resets, the cookie-echoing second packet, TLS flights and the push are retried."""
    net = Net(pki, server_ctx, static_key, loss=0.3, seed=seed, hand_window=120)
    net.connect(timeout=120)
    net.loss = 0.0
    net.exchange_data()


def test_retransmitted_first_control_packet_still_acks_the_server_reset(pki, server_ctx, static_key):
    """The listener creates the session only from a packet that ACKs its reset: a lost ClientHello's
    retransmission must carry that ACK again."""
    net = Net(pki, server_ctx, static_key)
    net._collect()
    net._server_receive(net.to_server.pop())  # reset -> stateless reply
    for d in net.to_client:
        net.client.receive(d, net.now)
    net.to_client.clear()
    net._collect()
    assert net.to_server, "the client answers the server reset"
    net.to_server.clear()  # ClientHello lost
    net.advance(net.client.timer() - net.now + 0.01, step=10)  # the retransmission reaches the listener
    assert net.session is not None
    net.connect()


# ============================================================================ keepalive
def test_keepalive_pings_both_ways(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key)
    net.connect()
    server_seen = net.session.packets_in
    net.advance(35, step=1.0)
    assert net.client.pings_sent >= 2
    assert net.session.packets_in >= server_seen + 2  # pings counted by the server (not handed to the TUN)
    assert not net.server_in
    assert net.client.pings_received >= 2  # the server's keepalive, answered silently
    assert not net.client_in
    assert net.client.connected and not net.session.closed


def test_traffic_suppresses_pings(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key)
    net.connect()
    for _ in range(6):
        net.to_server.append(net.client.encrypt(IP_UP))
        net.advance(5, step=1.0)
    assert net.client.pings_sent == 0


def test_ping_restart_when_the_server_goes_silent(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key)
    net.connect()
    net.cut_to_client = True
    net.advance(59, step=1.0)
    assert net.client.connected
    net.advance(12, step=1.0)
    assert net.client.closed and net.client.close_reason.startswith("ping-restart")
    closed = net.of(net.client_events, ev.SessionClosed)
    assert closed and closed[0].reason.startswith("ping-restart")
    assert net.client.timer() is None


def test_ping_interval_override(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key, ping=3, ping_restart=20)
    net.connect()
    assert net.client.ping == 3
    net.advance(10, step=1.0)
    assert net.client.pings_sent >= 3


# ============================================================================ renegotiation
def test_server_initiated_renegotiation(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key, settings=SessionSettings(reneg_sec=30))
    net.connect()
    net.advance(31)
    assert net.of(net.client_events, ev.Renegotiated), net.client_events
    assert net.of(net.server_events, ev.Renegotiated)
    assert net.client.tx_key.key_id == 1 == net.session.data.tx_key.key_id
    net.exchange_data()
    assert net.client.encrypt(IP_UP)[0] & 7 == 1
    # a second renegotiation 30 s later works too, and the session stays up through it
    net.advance(31)
    assert net.client.tx_key.key_id == 2
    net.exchange_data()


def test_client_initiated_renegotiation(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key)
    net.connect()
    net.client.renegotiate(net.now)
    net.pump()
    assert net.of(net.client_events, ev.RenegotiationStarted)[0].by_client
    assert net.client.tx_key.key_id == 1
    assert net.session.data.tx_key.key_id == 1
    net.exchange_data()
    # the old key still decrypts during the transition window (late packets)
    late = net.session.keys[0].data_key.encrypt(IP_DOWN)
    assert net.client.receive(late, net.now) == IP_DOWN


# ============================================================================ refusals and endings
def test_denied_client_sees_auth_failed(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key, deny="certificate revoked")
    net.pump()
    net.advance(3)
    assert net.client.closed
    failed = net.of(net.client_events, ev.AuthFailed)
    assert failed and failed[0].reason == "certificate revoked"
    assert "AUTH_FAILED" in net.client.close_reason


def test_server_disconnect_restart(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key)
    net.connect()
    net.session.disconnect(net.now, "RESTART")
    net.pump()
    assert net.client.closed and net.client.close_reason == "server sent RESTART"


def test_client_disconnect_tells_the_server(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key)
    net.connect()
    net.client.disconnect(net.now)
    net.pump()
    assert net.of(net.server_events, ev.ClientExit)
    net.advance(1)
    assert net.session.closed
    assert net.client.closed and net.client.encrypt(IP_UP) is None


def test_untrusted_server_certificate_fails_the_handshake(pki, server_ctx, static_key):
    other = make_pki("other")
    ctx = build_client_context(pki.client_cert, pki.client_key, [other.ca_cert])
    net = Net(pki, server_ctx, static_key, client_ctx=ctx)
    net.pump()
    net.advance(3)
    failed = net.of(net.client_events, ev.HandshakeFailed)
    assert failed and "certificate" in failed[0].reason
    assert net.client.closed


def test_handshake_times_out_without_a_server(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key, hand_window=20)
    net.cut_to_client = True
    net.advance(25, step=1.0)
    assert net.client.closed and "hand-window" in net.client.close_reason
    # the reset was retransmitted with backoff meanwhile (after 2, 4, 8 s)
    assert sum(1 for d in net.sent_up if d[0] >> 3 == 7) == 4


def test_many_routes_arrive_in_continuation_messages(pki, server_ctx, static_key):
    routes = [ipaddress.IPv4Network(f"10.{i}.0.0/16") for i in range(120)]
    network = ClientNetworkConfig(NETWORK.address, NETWORK.network, NETWORK.gateway, routes=routes)
    net = Net(pki, server_ctx, static_key, network=network)
    push = net.connect().push
    assert push.routes == routes and push.peer_id == PEER_ID


def test_garbage_and_replays_do_not_hurt(pki, server_ctx, static_key):
    net = Net(pki, server_ctx, static_key)
    net.connect()
    ping = net.session.encrypt(IP_DOWN)
    assert net.client.receive(ping, net.now) == IP_DOWN
    assert net.client.receive(ping, net.now) is None  # replay
    for junk in (b"\x20" + b"\0" * 60, b"\x48" * 80, bytes(range(256)), b"\x38"):
        net.client.receive(junk, net.now)
    assert net.client.drops >= 3
    assert net.client.connected
    net.exchange_data()


# ============================================================================ message parsers
def test_server_key_method_2_parser():
    source = KeySource(b"\1" * 48, b"\2" * 32, b"\3" * 32)
    message = build_server_key_method_2(source, "V4,dev-type tun")
    for cut in range(len(message)):
        assert parse_server_key_method_2(message[:cut]) is None
    parsed = parse_server_key_method_2(message + b"PUSH_REPLY")
    assert parsed.options == "V4,dev-type tun" and parsed.length == len(message)
    assert (parsed.random1, parsed.random2) == (source.server_random1, source.server_random2)
    with pytest.raises(PacketError):
        parse_server_key_method_2(b"\1" + message[1:])


def test_push_reply_parser():
    push = PushReply.parse(["topology subnet", "route-gateway 172.16.0.1", "ifconfig 172.16.0.9 255.255.0.0",
                            "route 10.1.0.0 255.255.255.0", "route 10.2.0.1", "ping 10", "ping-restart 60",
                            "peer-id 5", "cipher aes-256-gcm", "key-derivation tls-ekm", "tun-mtu 1500"])
    assert push.address == ipaddress.IPv4Address("172.16.0.9") and push.topology == "subnet"
    assert push.routes == [ipaddress.IPv4Network("10.1.0.0/24"), ipaddress.IPv4Network("10.2.0.1/32")]
    assert push.cipher == "AES-256-GCM" and push.tls_ekm and not push.cc_exit and push.tun_mtu == 1500
    with pytest.raises(PacketError):
        PushReply.parse(["peer-id x"])
