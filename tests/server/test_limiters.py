"""Which actions are rate-limited and how (server/limiters.py): the tables built
from the configuration, and an account's buckets following it between relay
processes (SPEC §10)."""

from __future__ import annotations

import pytest

from blindrelay.protocol.errors import RateLimited
from blindrelay.server.config import RelayConfig
from blindrelay.server.limiters import Limiters

from ..relays import FakeClock


def test_an_account_taken_over_from_another_process_starts_with_empty_buckets() -> None:
    """SPEC §10: N processes never give one account N buckets; the pair bucket is
    keyed by the pair, not the account, and is left alone."""
    clock = FakeClock()
    limiters = Limiters.from_config(RelayConfig(), clock)
    limiters.take_over("alice", clock())
    for buckets in limiters.per_account():
        with pytest.raises(RateLimited):
            buckets.take("alice")
        buckets.take("bob")  # other accounts keep theirs
    limiters.send_pair.take(("alice", "bob"))
    assert limiters.send_pair not in limiters.per_account()


def test_statements_have_a_bucket_of_their_own_per_account() -> None:
    """SPEC §10: a STATEMENT takes a token of ``statement_rate_per_h`` / ``statement_burst``
    besides the send bucket's; the bucket is kept per process, like the pair bucket: at
    an hour's refill, emptying it at each move or restart would hold a block for a minute
    after every deploy."""
    clock = FakeClock()
    limiters = Limiters.from_config(RelayConfig(statement_rate_per_h=2.0, statement_burst=2), clock)
    assert limiters.statement not in limiters.per_account()
    limiters.statement.take("alice")
    limiters.statement.take("alice")
    with pytest.raises(RateLimited) as refused:
        limiters.statement.take("alice")
    assert abs(refused.value.retry_after_ms - 1_800_000) <= 1  # two an hour
    limiters.statement.take("bob")
    clock.advance(refused.value.retry_after_ms)
    limiters.statement.take("alice")
