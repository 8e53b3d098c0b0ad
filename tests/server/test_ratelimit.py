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
    buckets.take("alice")  # a bucket held, not a new one: refilled, not made anew
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


@pytest.mark.parametrize(("rate_per_s", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_bucket_that_would_never_refill_or_never_hold_a_token_is_refused(
    rate_per_s: float, burst: int
) -> None:
    """A rate of 0 would answer a refusal with a division by zero, a burst of 0 would
    refuse everything: a configuration error, caught when the relay starts."""
    with pytest.raises(ValueError, match="positive"):
        TokenBuckets(rate_per_s=rate_per_s, burst=burst, clock=FakeClock())


def test_a_growing_table_drops_the_full_buckets_and_keeps_the_spent_ones() -> None:
    """Keys an attacker chooses (source addresses) must cost memory only while their
    buckets are spent; a bucket still spent must survive the pruning, or a flood of
    new keys would refill everyone's."""
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=1.0, burst=2, clock=clock)
    for key in range(10_000):
        buckets.take(key)
    clock.advance(1_000)  # all of them full again
    buckets.take("victim")  # one too many keys: the table is pruned
    buckets.take("victim")
    assert len(buckets) == 1
    with pytest.raises(RateLimited):
        buckets.take("victim")
