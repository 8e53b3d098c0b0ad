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
from typing import IO, Any

LOGGER = logging.getLogger("blindrelay")
_FIELDS = "blindrelay_fields"


def log_event(level: int, event: str, **fields: object) -> None:
    """Log ``event`` with scalar ``fields``; bytes become ``"<n bytes>"``."""
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, event, extra={_FIELDS: {k: _scalar(v) for k, v in fields.items()}})


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
        line.update(getattr(record, _FIELDS, {}))
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
