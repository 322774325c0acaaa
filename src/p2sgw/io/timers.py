"""One loop timer for all sessions: a heap of deadlines with lazy invalidation.

Sessions reschedule freely; stale heap entries are skipped when they surface. An idle session
costs one heap entry per keepalive interval, never a wake-up of its own.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any


class TimerHeap:
    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[Any, float], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._heap: list[tuple[float, int, Any]] = []
        self._due: dict[int, float] = {}  # id(owner) -> its current deadline
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None

    def schedule(self, owner: Any, when: float | None) -> None:
        key = id(owner)
        if when is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), owner))
        if self._armed_for is None or when < self._armed_for:
            self._arm(when)

    def cancel(self, owner: Any) -> None:
        self._due.pop(id(owner), None)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = when
        self._handle = self._loop.call_later(max(0.0, when - time.time()), self._run)

    def _run(self) -> None:
        self._handle = None
        self._armed_for = None
        now = time.time()
        due = []
        while self._heap and self._heap[0][0] <= now:
            when, _, owner = heapq.heappop(self._heap)
            if self._due.get(id(owner)) == when:  # else rescheduled or cancelled since
                del self._due[id(owner)]
                due.append(owner)
        for owner in due:  # an owner that re-arms in the past runs again next round, not in a loop
            self._fire(owner, now)
        while self._heap and self._due.get(id(self._heap[0][2])) != self._heap[0][0]:
            heapq.heappop(self._heap)
        if self._heap:
            self._arm(self._heap[0][0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._heap.clear()
        self._due.clear()
