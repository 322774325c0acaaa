"""Structured log lines on stderr: `time level event key=value ...` (logfmt), one per event.

Nothing on the data path logs per packet: drops are counted and summarised by DropCounter.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter

_logger = logging.getLogger("p2sgw")


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields = getattr(record, "fields", {})
        tail = "".join(f" {k}={_quote(v)}" for k, v in fields.items())
        return f"{ts} {record.levelname.lower()} {record.getMessage()}{tail}"


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("p2sgw")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def log(event: str, level: int = logging.INFO, **fields: object) -> None:
    if _logger.isEnabledFor(level):
        _logger.log(level, event, extra={"fields": fields})


def warn(event: str, **fields: object) -> None:
    log(event, logging.WARNING, **fields)


def error(event: str, **fields: object) -> None:
    log(event, logging.ERROR, **fields)


def log_loop_exceptions(loop) -> None:
    """Errors escaping a callback (a reader, a timer) go to our log, not to an unconfigured logger."""

    def handler(loop, context: dict) -> None:
        exc = context.get("exception")
        error("loop.exception", message=context.get("message", ""), exception=repr(exc) if exc else "")

    loop.set_exception_handler(handler)


class DropCounter:
    """Counts dropped packets by reason: the first of a reason is logged at once (with its
    details), later ones only as a count in a summary line per interval."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.total: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._announced: set[str] = set()
        self._last_flush = 0.0

    def drop(self, reason: str, **fields: object) -> None:
        self.total[reason] += 1
        if reason in self._announced:
            self._pending[reason] += 1
        else:
            self._announced.add(reason)
            warn("packet.dropped", reason=reason, **fields)

    def flush(self, now: float) -> None:
        if now - self._last_flush < self.interval:
            return
        self._last_flush = now
        for reason, n in self._pending.items():
            warn("packet.dropped.summary", reason=reason, count=n, interval_s=self.interval)
        self._pending.clear()
        self._announced.clear()
