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
