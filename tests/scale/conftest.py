"""Scale-out tests: relay workers on one PostgreSQL database, killed and cut off under load.

Async tests run under ``asyncio.run`` via the hook below. The bound is generous on
purpose: a test's own phases are bounded much tighter (each crash test runs in well
under a minute here), but a PostgreSQL restart first waits for other test modules on
this machine to finish with the server (tests/pg.py's lock), which only they decide.
"""

from __future__ import annotations

from ..asyncrun import async_test_runner
from ..pg import LOCK_TIMEOUT_S, RESTART_TIMEOUT_S

TEST_TIMEOUT_S = 120.0 + 3 * (LOCK_TIMEOUT_S + RESTART_TIMEOUT_S)

pytest_pyfunc_call = async_test_runner(TEST_TIMEOUT_S)
