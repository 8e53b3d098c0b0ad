"""Structured logs: one JSON object per line, one line per event (SPEC §11).

A log line names the event, frame type, sizes, handles, outcome and error
code. It never holds envelope bytes, bodies, signatures or keys: the only way
to log is :func:`log_event`, whose fields must be scalars, and any ``bytes``
that slips in is replaced by its length. Exceptions are logged by type and
location only, because their messages may quote untrusted input.

Not here: what is worth logging (the dispatcher and handlers decide).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

LOGGER = logging.getLogger("blindrelay")
FIELDS_ATTRIBUTE = "blindrelay_fields"
"""The log record attribute that holds an event's fields: the JSON formatter writes
them, and the writer process collects them to send to the relay with its answers."""


def log_event(level: int, event: str, **fields: object) -> None:
    """Log ``event`` with scalar ``fields``; bytes become ``"<n bytes>"``."""
    if LOGGER.isEnabledFor(level):
        scalars = {k: _scalar(v) for k, v in fields.items()}
        LOGGER.log(level, event, extra={FIELDS_ATTRIBUTE: scalars})


REFUSAL_LOG_BURST = 20
REFUSAL_LOG_PER_S = 1.0
"""Refusals one connection may log: a burst, then one line a second. A refusal is
an INFO line, so without a budget a client sending nothing but refused requests
(402s, malformed frames) writes the operator's disk as fast as it can send; with it
a connection costs at most ~1 line a second after its first 20. Refusals past the
budget are counted, and the count rides on the next line logged for the
connection (``refusals_suppressed``), so the operator still sees how many there were."""


class RefusalLog:
    """One connection's refusal lines, within :data:`REFUSAL_LOG_BURST`/``_PER_S``."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._tokens = float(REFUSAL_LOG_BURST)
        self._at = clock()
        self.suppressed = 0
        """Refusals not logged since the last line that reported them."""

    def log(self, level: int, event: str, **fields: object) -> None:
        """Log a refusal if the budget allows, else count it."""
        now = self._clock()
        self._tokens = min(
            float(REFUSAL_LOG_BURST),
            self._tokens + max(0, now - self._at) * REFUSAL_LOG_PER_S / 1000.0,
        )
        self._at = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return
        self._tokens -= 1.0
        log_event(level, event, **fields, **self.take_suppressed())

    def take_suppressed(self) -> dict[str, int]:
        """``{"refusals_suppressed": n}`` for the next line, once, if any were counted."""
        if not self.suppressed:
            return {}
        count, self.suppressed = self.suppressed, 0
        return {"refusals_suppressed": count}


def _scalar(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return type(value).__name__


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", …fields}``; exceptions by type and place."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage() if record.name.startswith("blindrelay") else record.msg,
        }
        line.update(getattr(record, FIELDS_ATTRIBUTE, {}))
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["exc_type"] = type(exc).__name__
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                line["exc_at"] = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return json.dumps(line, separators=(",", ":"), default=str)


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Send blindrelay's (and websockets' warnings) as JSON lines to ``stream`` (stderr).

    Returns the handler so an embedding program or a test can remove it.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    LOGGER.setLevel(numeric)
    LOGGER.addHandler(handler)
    LOGGER.propagate = False
    websockets_logger = logging.getLogger("websockets")
    websockets_logger.setLevel(max(numeric, logging.WARNING))
    websockets_logger.addHandler(handler)
    websockets_logger.propagate = False
    return handler


def remove_handler(handler: logging.Handler) -> None:
    LOGGER.removeHandler(handler)
    logging.getLogger("websockets").removeHandler(handler)
