"""Tests of the PostgreSQL plumbing (tests/pg.py) against the real server.

Async tests run under ``asyncio.run`` via the hook below, bounded by
``TEST_TIMEOUT_S``: a crash restart with its recovery is the slowest thing here.
"""

from __future__ import annotations

from ..asyncrun import async_test_runner
from ..pg import RESTART_TIMEOUT_S

TEST_TIMEOUT_S = RESTART_TIMEOUT_S + 30.0

pytest_pyfunc_call = async_test_runner(TEST_TIMEOUT_S)
