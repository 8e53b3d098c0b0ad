"""The statement budget kept by the store, one for every relay process (SPEC §10, threat
model T64): each accepted statement is a log entry kept for ever (§15), and the
per-process STATEMENT bucket let an account that logs in to N workers make N times its
statements."""

from __future__ import annotations

import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import Error
from blindrelay.protocol.transparency import entries
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay

from .conftest import ALL_BACKENDS, Clients, FakeClock, db_rows, error_code, relay_with, until
from .consent_helpers import state, stated

BACKENDS = ALL_BACKENDS

HOUR_MS = 3_600_000


async def _logged_statements(relay: RunningRelay) -> int:
    """Statement entries in the relay's transparency log (SPEC §15.1)."""
    data = await relay.ctx.store.submit("log_entries", 0, 10_000)
    return sum(isinstance(entries.decode_entry(d), entries.StatementLogged) for d in data)


@pytest.mark.postgresql_only  # relay processes sharing a store
async def test_a_second_relay_process_gives_no_second_statement_burst(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """T64: bob spends his statement burst (block, unblock) on the first worker, then
    logs in to the second. Before, the second worker's bucket of its own was full and
    took two more statements at once — two more log entries for ever; with N workers N
    bursts and N times ``STATEMENT_RATE_PER_H``. Now the store refuses with 402 and the
    time until the one budget has a token, and logs nothing."""
    limits_ = {"statement_burst": 2, "statement_rate_per_h": 60.0}
    async with (
        relay_with(config, clock, **limits_) as first,
        relay_with(config, clock, **limits_) as second,
    ):
        bob = await clients.registered(first.url, "bob")
        await clients.registered(first.url, "carol")
        before = await _logged_statements(first)
        await stated(bob, "block", "carol", clock.now)
        await stated(bob, "unblock", "carol", clock.now)
        refused = await state(bob, "block", "carol", clock.now)  # the first one's bucket
        assert error_code(refused) == ErrorCode.RATE_LIMITED
        await bob.close()
        ended = "SELECT COUNT(*) FROM account_sessions WHERE handle = 'bob' AND live = false"
        await until(lambda: db_rows(first.config, ended) == [(1,)])
        clock.advance(1_000)  # the send bucket, taken over, has tokens again
        bob, _ = await clients.logged_in(second.url, "bob", bob.key)
        limited = await state(bob, "block", "carol", clock.now)
        assert error_code(limited) == ErrorCode.RATE_LIMITED
        assert isinstance(limited, Error) and limited.retry_after is not None
        assert abs(limited.retry_after - (HOUR_MS // 60 - 1_000)) <= 1
        assert await _logged_statements(second) == before + 2
        clock.advance(limited.retry_after)
        await stated(bob, "block", "carol", clock.now)
        assert await _logged_statements(second) == before + 3


async def test_the_store_budget_refuses_nothing_a_single_process_allows(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §10: with one relay process the budget kept by the store and the process's
    bucket agree — a refused statement (here: an unblock of nobody blocked, ERROR 500)
    spends the bucket's token and not the budget's, so the budget never refuses first —
    and the budget is spent by accepted statements only."""
    async with relay_with(config, clock, statement_burst=3) as relay:
        bob = await clients.registered(relay.url, "bob")
        await clients.registered(relay.url, "carol")
        unblock = await state(bob, "unblock", "carol", clock.now)
        assert error_code(unblock) == ErrorCode.INVALID_STATEMENT
        await stated(bob, "block", "carol", clock.now)
        await stated(bob, "unblock", "carol", clock.now)
        limited = await state(bob, "block", "carol", clock.now)
        assert error_code(limited) == ErrorCode.RATE_LIMITED  # the process's bucket
        refill_ms = HOUR_MS / limits.STATEMENT_RATE_PER_H
        assert isinstance(limited, Error) and limited.retry_after is not None
        assert abs(limited.retry_after - refill_ms) <= 1
        clock.advance(limited.retry_after)
        await stated(bob, "block", "carol", clock.now)  # the budget kept one token
