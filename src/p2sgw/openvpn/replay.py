"""Sliding replay window (ovpn26 packet_id.c), shared by the data channel and tls-crypt/tls-auth.

`check()` is side-effect free so a packet can be verified (tag) before `update()` commits it:
a forged packet must never move the window.
"""

from __future__ import annotations


class ReplayWindow:
    __slots__ = ("bitmap", "highest", "size")

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.highest = 0  # highest packet id accepted so far; 0 = none yet (ids start at 1)
        self.bitmap = 0  # bit i set = packet (highest - i) seen

    def check(self, packet_id: int) -> bool:
        if packet_id == 0:
            return False
        if packet_id > self.highest:
            return True
        offset = self.highest - packet_id
        if offset >= self.size:
            return False
        return not (self.bitmap >> offset) & 1

    def update(self, packet_id: int) -> None:
        if packet_id > self.highest:
            shift = packet_id - self.highest
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = packet_id
        else:
            self.bitmap |= 1 << (self.highest - packet_id)
