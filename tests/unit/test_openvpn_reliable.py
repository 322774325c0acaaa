"""The control-channel reliability layer (ovpn26 reliable.c): windows, ACKs, retransmission."""

from __future__ import annotations

import random

from p2sgw.openvpn.packets import P_CONTROL_V1
from p2sgw.openvpn.reliable import (
    RECV_WINDOW,
    SEND_WINDOW,
    ReliableReceiver,
    ReliableSender,
)


# --------------------------------------------------------------------------- receiver
def test_in_order_delivery_from_shuffled_input():
    rx = ReliableReceiver(0)
    ids = list(range(RECV_WINDOW))
    random.Random(3).shuffle(ids)
    delivered = []
    for pid in ids:
        delivered += rx.receive(P_CONTROL_V1, pid, f"m{pid}".encode())
    assert delivered == [(P_CONTROL_V1, f"m{i}".encode()) for i in range(RECV_WINDOW)]
    assert sorted(rx.take_acks(100)) == list(range(RECV_WINDOW))
    assert rx.expected_id == RECV_WINDOW


def test_delivery_waits_for_the_gap():
    rx = ReliableReceiver(1)  # the session's key state 0 expects the client's id 1 first
    assert rx.receive(P_CONTROL_V1, 3, b"c") == []
    assert rx.receive(P_CONTROL_V1, 2, b"b") == []
    assert rx.receive(P_CONTROL_V1, 1, b"a") == [(P_CONTROL_V1, b"a"), (P_CONTROL_V1, b"b"), (P_CONTROL_V1, b"c")]


def test_duplicates_are_reacked_not_redelivered():
    rx = ReliableReceiver(0)
    assert rx.receive(P_CONTROL_V1, 0, b"a") == [(P_CONTROL_V1, b"a")]
    assert rx.take_acks(8) == [0]
    assert rx.receive(P_CONTROL_V1, 0, b"a") == []  # retransmission: our ACK got lost
    assert rx.take_acks(8) == [0]  # ... so ACK again
    assert rx.receive(P_CONTROL_V1, 2, b"c") == []
    assert rx.receive(P_CONTROL_V1, 2, b"c") == []  # buffered duplicate
    assert rx.take_acks(8) == [2]  # acked once per pending list, not twice
    assert rx.receive(P_CONTROL_V1, 1, b"b") == [(P_CONTROL_V1, b"b"), (P_CONTROL_V1, b"c")]


def test_beyond_window_dropped_without_ack():
    rx = ReliableReceiver(0)
    assert rx.receive(P_CONTROL_V1, RECV_WINDOW, b"far") == []
    assert rx.receive(P_CONTROL_V1, 10_000, b"far") == []
    assert rx.take_acks(8) == []  # not acked: the peer retransmits once the window moved
    assert rx.receive(P_CONTROL_V1, RECV_WINDOW - 1, b"edge") == []
    assert rx.take_acks(8) == [RECV_WINDOW - 1]
    # once id 0 arrives the window moves; id RECV_WINDOW is acceptable now
    assert rx.receive(P_CONTROL_V1, 0, b"0") == [(P_CONTROL_V1, b"0")]
    assert rx.receive(P_CONTROL_V1, RECV_WINDOW, b"far") == []
    assert RECV_WINDOW in rx.take_acks(8)


def test_take_acks_limit():
    rx = ReliableReceiver(0)
    for pid in range(10):
        rx.receive(P_CONTROL_V1, pid, b"")
    assert rx.take_acks(4) == [0, 1, 2, 3]
    assert rx.take_acks(8) == [4, 5, 6, 7, 8, 9]
    assert rx.take_acks(8) == []


# --------------------------------------------------------------------------- sender
def test_send_window_of_six():
    tx = ReliableSender(first_id=0, initial_timeout=2.0)
    for i in range(10):
        tx.queue(P_CONTROL_V1, bytes([i]))
    first = tx.to_send(0.0)
    assert [pid for _, pid, _ in first] == list(range(SEND_WINDOW)) == [0, 1, 2, 3, 4, 5]
    assert tx.to_send(0.5) == []  # window full, nothing due
    tx.ack(0)
    assert [(pid, p) for _, pid, p in tx.to_send(0.6)] == [(6, b"\x06")]
    tx.ack(3)
    tx.ack(1)
    assert [pid for _, pid, _ in tx.to_send(0.7)] == [7, 8]
    assert not tx.idle


def test_first_id_and_idle():
    tx = ReliableSender(first_id=1)
    assert tx.idle and tx.next_deadline() is None
    tx.queue(P_CONTROL_V1, b"x")
    assert not tx.idle
    assert tx.to_send(10.0) == [(P_CONTROL_V1, 1, b"x")]
    assert tx.next_deadline() == 12.0
    tx.ack(1)
    assert tx.idle and tx.next_deadline() is None
    tx.ack(1)  # duplicate ack: harmless
    tx.ack(99)  # ack of something never sent: harmless


def test_retransmit_with_doubling_backoff():
    tx = ReliableSender(first_id=0, initial_timeout=2.0)
    tx.queue(P_CONTROL_V1, b"hello")
    assert tx.to_send(0.0) == [(P_CONTROL_V1, 0, b"hello")]
    assert tx.to_send(1.9) == []
    times = []
    now = 0.0
    while now < 100:
        now = tx.next_deadline()
        out = tx.to_send(now)
        assert out == [(P_CONTROL_V1, 0, b"hello")]
        times.append(now)
    gaps = [b - a for a, b in zip([0.0] + times, times)]
    assert gaps[:4] == [2.0, 4.0, 8.0, 16.0]  # exponential backoff
    assert max(gaps) <= 30.0  # capped
    tx.ack(0)
    assert tx.to_send(now + 100) == [] and tx.idle


def test_fast_retransmit_after_three_later_acks():
    tx = ReliableSender(first_id=0, initial_timeout=2.0)
    for i in range(5):
        tx.queue(P_CONTROL_V1, bytes([i]))
    tx.to_send(0.0)
    tx.ack(1)
    tx.ack(2)
    assert tx.to_send(0.1) == []  # two later ACKs: not yet
    tx.ack(3)
    assert tx.to_send(0.2) == [(P_CONTROL_V1, 0, b"\x00")]  # third one: resend id 0 before its timeout
    assert tx.to_send(0.3) == []  # and only once
    tx.ack(4)
    assert tx.to_send(0.4) == []  # the counter restarted


def test_lost_packet_round_trip_between_sender_and_receiver():
    """A sender and a receiver over a lossy, reordering link: everything arrives once, in order."""
    rng = random.Random(11)
    tx, rx = ReliableSender(0, 1.0), ReliableReceiver(0)
    messages = [f"msg{i}".encode() for i in range(40)]
    for m in messages:
        tx.queue(P_CONTROL_V1, m)
    got = []
    now = 0.0
    for _ in range(2000):
        batch = tx.to_send(now)
        rng.shuffle(batch)
        for op, pid, payload in batch:
            if rng.random() < 0.3:
                continue  # lost
            got += [p for _, p in rx.receive(op, pid, payload)]
        for pid in rx.take_acks(8):
            if rng.random() < 0.3:
                continue  # ACK lost
            tx.ack(pid)
        if tx.idle:
            break
        now += 0.5
    assert got == messages
    assert tx.idle
