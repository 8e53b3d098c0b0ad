"""What the SDK's tests share: running ``async def`` tests (no plugin needed).

Each coroutine test runs in a fresh event loop under ``TEST_TIMEOUT_S``, so a
bug fails instead of hanging. Plain helpers — clients online against a relay, an
inbox reader, businesses and their customers — are in :mod:`.harness`; the relay
and its clock in tests/relays.py.
"""

from __future__ import annotations

from ..asyncrun import async_test_runner

TEST_TIMEOUT_S = 60.0
"""For a whole test: several clients, a relay, dozens of round trips on loopback."""

pytest_pyfunc_call = async_test_runner(TEST_TIMEOUT_S)
