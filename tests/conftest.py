"""Options for the whole test tree (pytest reads ``pytest_addoption`` only here)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest_plugins = ("tests.pg",)
"""PostgreSQL fixtures and the rules for running PostgreSQL tests (tests/pg.py)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--relay-url",
        default=None,
        metavar="URL",
        help="run tests/conformance against this relay (ws://… or wss://…) "
        "instead of starting a local one",
    )


@pytest.fixture(autouse=True)
def _loggers_as_they_were() -> Iterator[None]:
    """Undo what a test's in-process ``blindrelay serve`` did to logging.

    ``configure_logging`` adds a handler on the stderr of its moment — pytest's capture
    stream, closed after the test. Left in place, every later log call in the process
    fails to write and prints a traceback, which slowed later relays by orders of
    magnitude (the slow-reader tests then timed out in full runs only).
    """
    names = ("blindrelay", "websockets")
    saved = [
        (logger, list(logger.handlers), logger.level, logger.propagate)
        for logger in map(logging.getLogger, names)
    ]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
