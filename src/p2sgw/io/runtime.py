"""Process setup shared by the control process and the data workers: the event loop and the GC."""

from __future__ import annotations

import asyncio
import gc

from ..logs import log_loop_exceptions

# A gateway holds many long-lived objects (sessions, keys, TLS state) and makes few reference
# cycles. With CPython's default gen-0 threshold (700) the collector ran every few handshakes and
# rescanned every session: 6 % of the control process's CPU while 6,000 clients connected.
GC_THRESHOLDS = (20000, 50, 50)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, errors escaping callbacks logged; set as the current loop."""
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    log_loop_exceptions(loop)
    return loop


def settle_gc() -> None:
    """Call once start-up is done: what exists now (modules, configuration) lives as long as the
    process, so the collector stops rescanning it (gc.freeze), and collects young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
