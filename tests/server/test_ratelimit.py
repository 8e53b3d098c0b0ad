"""Token buckets on a fake clock (server/ratelimit.py)."""

from __future__ import annotations

import pytest

from blindrelay.protocol.errors import RateLimited
from blindrelay.server.ratelimit import TokenBuckets

from .conftest import FakeClock


def test_a_bucket_allows_its_burst_then_refuses_with_retry_after() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=4.0, burst=3, clock=clock)
    for _ in range(3):
        buckets.take("alice")
    with pytest.raises(RateLimited) as refused:
        buckets.take("alice")
    assert refused.value.retry_after_ms == 250
    buckets.take("bob")  # other keys have their own bucket
    clock.advance(250)
    buckets.take("alice")
    with pytest.raises(RateLimited):
        buckets.take("alice")


def test_a_bucket_refills_only_up_to_its_burst() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=1000.0, burst=2, clock=clock)
    clock.advance(3_600_000)
    buckets.take("alice")
    buckets.take("alice")
    with pytest.raises(RateLimited):
        buckets.take("alice")


class CountedKey:
    """A bucket key that counts how often the buckets look it up."""

    lookups = 0

    def __init__(self, name: int) -> None:
        self.name = name

    def __hash__(self) -> int:
        CountedKey.lookups += 1
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountedKey) and other.name == self.name


def test_many_keys_that_never_refill_cost_amortised_constant_work() -> None:
    """Registration buckets are keyed by source address, which an attacker with many
    IPv6 /64s chooses: pruning must not rescan every bucket on every take when none
    of them is full again (that was quadratic)."""
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=20 / 3600, burst=20, clock=clock)
    keys = [CountedKey(n) for n in range(12_000)]
    CountedKey.lookups = 0
    for key in keys:
        buckets.take(key)
    assert CountedKey.lookups < 10 * len(keys)
