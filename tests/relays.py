"""A relay for tests: a clock that moves only when told, registration limits a test
suite can live with, and a relay on 127.0.0.1 port 0 for the length of a block.

Shared by the relay's tests (tests/server/conftest.py builds its fixtures on it)
and the SDK's (tests/client/), which start one relay per test with ``relay_at``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay, serve

T0 = 1_800_000_000_000
"""Where a :class:`FakeClock` starts unless told otherwise (Unix ms, January 2027)."""


class FakeClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


MANY_REGISTRATIONS: dict[str, Any] = {
    "register_burst": 100_000, "register_rate_per_h": 100_000.0,
    "max_unauthenticated_per_source": 100_000,
    "connections_per_s_source": 100_000.0, "connections_burst_source": 100_000,
}  # fmt: skip
"""Registrations, connections not logged in yet and new connections per source address
(SPEC §4.6.1, §1.2.2) for tests: every test client comes from 127.0.0.1, so the default limits would
cut the suite off (a thousand customers connecting at once); the tests of the limits
themselves set them back (tests/server/test_registration.py, test_admission.py)."""

QUICK_TREE_HEADS: dict[str, Any] = {"sth_interval_s": 0.05}
"""A signed tree head every 50 ms rather than 10 s: the SDK waits for one before its
first message to a new business (SPEC §15.6), and a test should not wait 10 s."""


@asynccontextmanager
async def relay_at(
    tmp_path: Path, clock: Callable[[], int] | None = None, **config: Any
) -> AsyncIterator[RunningRelay]:
    """A relay with its database in ``tmp_path`` (and ``clock``, else the wall clock),
    closed when the block ends; ``config`` changes :class:`RelayConfig` fields."""
    config = {**MANY_REGISTRATIONS, **QUICK_TREE_HEADS, **config}  # clients: 127.0.0.1
    relay = await serve(
        RelayConfig(host="127.0.0.1", port=0, db_path=tmp_path / "relay.db", **config),
        clock=clock,
    )
    try:
        yield relay
    finally:
        await relay.close()
