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
