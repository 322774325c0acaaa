"""Data-plane pieces that need no lab: the steering program (run by this kernel on loopback), the
shared counter table, the message channel, key hand-over and the VNet → client routing."""

from __future__ import annotations

import os
import socket
import time

import pytest

from p2sgw.dataplane.path import deliver
from p2sgw.dataplane.shared import Channel, StatsTable
from p2sgw.dataplane.steering import reuseport_group, steering_program, worker_of_peer_id
from p2sgw.openvpn.data_channel import BYTES_IN, PACKETS_IN, DataChannel, DataKey
from p2sgw.openvpn.static_key import Key2


def received_by(socks: list[socket.socket]) -> list[int]:
    got = []
    for i, sock in enumerate(socks):
        try:
            while True:
                sock.recv(2048)
                got.append(i)
        except BlockingIOError:
            pass
    return got


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_steering_by_peer_id(workers):
    socks = reuseport_group("127.0.0.1", 0, workers)
    try:
        port = socks[0].getsockname()[1]
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]  # several source ports
        cases = [(bytes([0x48 | key_id]) + peer_id.to_bytes(3, "big") + os.urandom(30),
                  worker_of_peer_id(peer_id, workers))
                 for peer_id in (0, 1, 2, 5, 0xABCDE, 0xFFFFFE) for key_id in (0, 3)]
        cases += [(b"\x38" + os.urandom(40), 0),  # P_CONTROL_HARD_RESET_CLIENT_V2
                  (b"\x20" + os.urandom(40), 0),  # P_CONTROL_V1
                  (b"\x30" + os.urandom(40), 0),  # P_DATA_V1: no peer-id
                  (b"\x48\x00", 0), (b"", 0)]  # runts
        for sender in senders:
            for data, want in cases:
                sender.sendto(data, ("127.0.0.1", port))
                deadline = time.time() + 1
                while not (got := received_by(socks)) and time.time() < deadline:
                    time.sleep(0.001)
                assert got == [want], (data[:4].hex(), got, want)
    finally:
        for sock in socks:
            sock.close()


def test_steering_program_limits():
    assert len(steering_program(2)) == 9 * 8
    with pytest.raises(ValueError):
        steering_program(0)


def test_stats_table_is_shared_through_its_fd():
    table = StatsTable(1024)
    other = StatsTable(1024, os.dup(table.fd))  # what a worker maps
    row = other.row(7)
    row[BYTES_IN] += 1500
    assert table.row(7)[BYTES_IN] == 1500 and table.row(6)[BYTES_IN] == 0
    with pytest.raises(IndexError):
        table.row(1024)


def test_channel_round_trip_and_eof():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left, right = Channel(a, send_timeout=1.0), Channel(b, send_timeout=None)
    assert right.receive() == []
    left.send("peer", 3, ("192.0.2.9", 1194), b"\xac\x10\x00\x02", [], None)
    left.send("ping", 1)
    assert right.receive() == [("peer", 3, ("192.0.2.9", 1194), b"\xac\x10\x00\x02", [], None), ("ping", 1)]
    # one loop turn's worth: more messages than fit one datagram, each with a full key set
    spec = DataKey("AES-256-GCM", Key2(os.urandom(256)), 0, 1).spec
    batch = [("peer", i, ("192.0.2.9", i), b"\xac\x10\x00\x02", [spec] * 8, 0) for i in range(1000)]
    left.send_batch(batch)
    assert right.receive() == batch
    a.close()
    with pytest.raises(EOFError):
        right.receive()


def test_key_rebuilt_from_spec_interoperates():
    key2 = Key2(os.urandom(256))
    server = DataKey("AES-256-GCM", key2, 1, 42)
    worker_copy = DataKey.from_spec(server.spec)
    client = DataKey("AES-256-GCM", key2, 1, 42, server=False)
    channel = DataChannel()
    channel.rx_keys[1] = worker_copy
    packet = b"\x45" + bytes(39)
    assert channel.decrypt(client.encrypt(packet)) == packet
    assert channel.stats[PACKETS_IN] == 1 and channel.stats[BYTES_IN] == len(packet)
    assert client.decrypt(worker_copy.encrypt(packet)) == packet


def test_worker_keeps_its_key_objects_across_key_updates():
    from p2sgw.dataplane.worker import DataPeer

    class FakeWorker:
        stats = StatsTable(16)
        sender = None

    key2a, key2b = Key2(os.urandom(256)), Key2(os.urandom(256))
    a, b = DataKey("AES-256-GCM", key2a, 0, 3), DataKey("AES-256-GCM", key2b, 1, 3)
    peer = DataPeer(FakeWorker(), 3, ("192.0.2.1", 1), b"\xac\x10\x00\x02")
    peer.set_keys([a.spec], 0)
    first = peer.data.tx_key
    first.encrypt(b"x")  # packet-id 1 used
    peer.set_keys([a.spec, b.spec], 1)  # renegotiated: old key still decrypts, new key sends
    assert peer.data.rx_keys[0] is first and first.tx_packet_id == 1
    assert peer.data.tx_key.key_id == 1
    peer.set_keys([b.spec], 1)  # lame duck retired
    assert peer.data.rx_keys[0] is None


class FakeRoute:
    def __init__(self, owner=None):
        self.owner = owner
        self.sent: list[list[bytes]] = []

    def encrypt(self, packet):
        return b"E" + bytes(packet)

    def send_many(self, packets):
        self.sent.append(packets)


def tun_packet(dst: bytes) -> bytes:
    return bytes(10) + b"\x45" + bytes(15) + dst + bytes(20)


def test_deliver_batches_per_client_and_forwards_foreign_sessions():
    here, there = FakeRoute(), FakeRoute(owner=2)
    routes = {b"\xac\x10\x00\x02": here, b"\xac\x10\x00\x03": there}
    forwarded = []
    packets = [tun_packet(b"\xac\x10\x00\x02"), tun_packet(b"\xac\x10\x00\x03"), tun_packet(b"\xac\x10\x00\x02"),
               tun_packet(b"\x0a\x00\x00\x01")]
    deliver(packets, routes, lambda owner, p: forwarded.append((owner, p)))
    assert len(here.sent) == 1 and len(here.sent[0]) == 2 and here.sent[0][0].startswith(b"E\x45")
    assert forwarded == [(2, packets[1])]
    deliver(packets, routes, None)  # already forwarded once: never bounced again
    assert len(forwarded) == 1
