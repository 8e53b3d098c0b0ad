"""Options for the whole test tree (pytest reads ``pytest_addoption`` only here)."""

from __future__ import annotations

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
