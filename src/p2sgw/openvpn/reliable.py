"""OpenVPN's reliability layer for control packets (ovpn26 reliable.c), one pair per key state.

Sender: at most SEND_WINDOW unacknowledged packets in flight, retransmission with exponential
backoff from `initial_timeout`, fast retransmit after 3 later ACKs. Receiver: in-order delivery
from a window of RECV_WINDOW ids, duplicates re-ACKed and dropped. Over TCP the same layer runs
(the client still needs ACKs); retransmission there is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

SEND_WINDOW = 6
RECV_WINDOW = 12
FAST_RETRANSMIT_ACKS = 3
MAX_TIMEOUT = 30.0


@dataclass(slots=True)
class _InFlight:
    opcode: int
    payload: bytes
    deadline: float
    timeout: float
    later_acks: int = 0


class ReliableSender:
    def __init__(self, first_id: int = 0, initial_timeout: float = 2.0) -> None:
        self.next_id = first_id
        self.initial_timeout = initial_timeout
        # not yet given an id (window full); rarely more than a few, and a deque costs 760 bytes
        self._queue: list[tuple[int, bytes]] = []
        self._in_flight: dict[int, _InFlight] = {}

    def queue(self, opcode: int, payload: bytes) -> None:
        self._queue.append((opcode, payload))

    @property
    def idle(self) -> bool:
        return not self._queue and not self._in_flight

    def ack(self, packet_id: int) -> None:
        if self._in_flight.pop(packet_id, None) is None:
            return
        for pid, item in self._in_flight.items():
            if pid < packet_id:
                item.later_acks += 1

    def to_send(self, now: float) -> list[tuple[int, int, bytes]]:
        """(opcode, packet id, payload) due now: new packets within the window, then retransmissions."""
        out: list[tuple[int, int, bytes]] = []
        for pid, item in self._in_flight.items():
            if now >= item.deadline or item.later_acks >= FAST_RETRANSMIT_ACKS:
                item.timeout = min(item.timeout * 2, MAX_TIMEOUT)
                item.deadline = now + item.timeout
                item.later_acks = 0
                out.append((item.opcode, pid, item.payload))
        while self._queue and len(self._in_flight) < SEND_WINDOW:
            opcode, payload = self._queue.pop(0)
            pid = self.next_id
            self.next_id += 1
            self._in_flight[pid] = _InFlight(opcode, payload, now + self.initial_timeout, self.initial_timeout)
            out.append((opcode, pid, payload))
        return out

    def next_deadline(self) -> float | None:
        if not self._in_flight:
            return None
        return min(item.deadline for item in self._in_flight.values())


class ReliableReceiver:
    def __init__(self, expected_id: int = 0) -> None:
        self.expected_id = expected_id
        self._buffer: dict[int, tuple[int, bytes]] = {}
        self.pending_acks: list[int] = []

    def receive(self, opcode: int, packet_id: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Accept one reliable packet; return the (opcode, payload) list now deliverable in order."""
        if packet_id >= self.expected_id + RECV_WINDOW:
            return []  # beyond the window: not acked, the peer will retransmit
        if packet_id not in self.pending_acks:
            self.pending_acks.append(packet_id)
        if packet_id < self.expected_id or packet_id in self._buffer:
            return []  # duplicate: re-ACK only
        self._buffer[packet_id] = (opcode, payload)
        out = []
        while self.expected_id in self._buffer:
            out.append(self._buffer.pop(self.expected_id))
            self.expected_id += 1
        return out

    def take_acks(self, limit: int) -> list[int]:
        acks, self.pending_acks = self.pending_acks[:limit], self.pending_acks[limit:]
        return acks
