"""RADIUS accounting for sessions (RFC 2866/2869): Start, Interim-Update, Stop.

Octets and packets are counted by the data path anyway (session counters); this only reads them.
Every Class from the Access-Accept is echoed unchanged. Accounting-On/Off at gateway start/stop
let the server close stale records.
"""

from __future__ import annotations

import asyncio
import time

from .config import RadiusSettings
from .io.radius import AsyncRadiusClient, RadiusUnavailable
from .logs import warn
from .sessions import Session

START, STOP, INTERIM, ACCOUNTING_ON, ACCOUNTING_OFF = 1, 2, 3, 7, 8
TERMINATE_CAUSES = {
    "User-Request": 1, "Lost-Carrier": 2, "Idle-Timeout": 4, "Session-Timeout": 5, "Admin-Reset": 6,
    "NAS-Reboot": 11, "NAS-Request": 10,
}
GIGA = 1 << 32


class Accounting:
    def __init__(self, settings: RadiusSettings, client: AsyncRadiusClient, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.client = client
        self.loop = loop
        self._interim: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()

    def _send(self, status: int, attributes: list, what: str) -> None:
        async def run() -> None:
            try:
                await self.client.accounting(status, attributes)
            except RadiusUnavailable as exc:
                warn("radius.accounting_failed", what=what, reason=exc.reason)

        task = self.loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _attributes(session: Session) -> list:
        attrs: list = [
            ("Acct-Session-Id", session.id),
            ("User-Name", session.identity),
            ("Calling-Station-Id", session.remote.rsplit(":", 1)[0]),
            ("Event-Timestamp", int(time.time())),
        ]
        if session.virtual_ip is not None:
            attrs.append(("Framed-IP-Address", str(session.virtual_ip)))
        attrs += [("Class", value) for value in session.radius_class]
        return attrs

    @staticmethod
    def _usage(session: Session) -> list:
        t = session.tunnel
        return [
            ("Acct-Session-Time", int(time.time() - session.connected_at.timestamp())),
            ("Acct-Input-Octets", t.bytes_in % GIGA), ("Acct-Input-Gigawords", t.bytes_in // GIGA),
            ("Acct-Output-Octets", t.bytes_out % GIGA), ("Acct-Output-Gigawords", t.bytes_out // GIGA),
            ("Acct-Input-Packets", t.packets_in % GIGA), ("Acct-Output-Packets", t.packets_out % GIGA),
        ]

    def accounting_on(self) -> None:
        self._send(ACCOUNTING_ON, [("Event-Timestamp", int(time.time()))], "Accounting-On")

    async def accounting_off(self) -> None:
        try:
            await asyncio.wait_for(self.client.accounting(ACCOUNTING_OFF, [("Event-Timestamp", int(time.time()))]), 3)
        except (TimeoutError, RadiusUnavailable):
            pass

    def start(self, session: Session, interim_interval: int | None) -> None:
        self._send(START, self._attributes(session), "Start")
        interval = interim_interval or self.settings.interim_interval
        if interval:
            self._schedule(session, interval)

    def _schedule(self, session: Session, interval: int) -> None:
        def interim() -> None:
            self._send(INTERIM, self._attributes(session) + self._usage(session), "Interim-Update")
            self._schedule(session, interval)

        self._interim[session.id] = self.loop.call_later(interval, interim)

    def stop(self, session: Session, cause: str) -> None:
        handle = self._interim.pop(session.id, None)
        if handle is not None:
            handle.cancel()
        attrs = self._attributes(session) + self._usage(session)
        attrs.append(("Acct-Terminate-Cause", TERMINATE_CAUSES.get(cause, TERMINATE_CAUSES["Lost-Carrier"])))
        self._send(STOP, attrs, "Stop")

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=3)
