"""Waiting out ERROR 402 (client/pacing.py, SPEC §9, §10) on a clock the test moves:
how often and how long a request is asked again, and the pace a reader learns."""

from __future__ import annotations

import asyncio
import math

import pytest

from blindrelay.client.pacing import Pacer, wait_out_rate_limits
from blindrelay.protocol.errors import RateLimited


class Clock:
    """Seconds that move only when slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Bucket:
    """A relay's token bucket (SPEC §10) on ``clock``: ``burst``, one token a ``every_ms``."""

    def __init__(self, clock: Clock, burst: int, every_ms: int) -> None:
        self.clock, self.burst, self.every_ms = clock, burst, every_ms
        self.tokens, self.at = float(burst), clock.now
        self.refused = 0

    async def take(self) -> str:
        now = self.clock.now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * 1000 / self.every_ms)
        self.at = now
        if self.tokens < 1:
            self.refused += 1
            raise RateLimited("", retry_after_ms=math.ceil((1 - self.tokens) * self.every_ms))
        self.tokens -= 1
        return "answer"


def test_a_402_is_waited_out_and_a_relay_that_answers_it_for_ever_is_given_up_on() -> None:
    clock = Clock()
    answers = iter([RateLimited("", 40), RateLimited("", 60), "answer"])

    async def ask() -> str:
        answer = next(answers)
        if isinstance(answer, RateLimited):
            raise answer
        return answer

    assert asyncio.run(wait_out_rate_limits(ask, retries=5, sleep=clock.sleep)) == "answer"
    assert clock.slept == [0.04, 0.06]

    async def refuse(wait_ms: int) -> str:
        raise RateLimited("", wait_ms)

    clock.slept.clear()
    with pytest.raises(RateLimited):  # the tries run out
        asyncio.run(wait_out_rate_limits(lambda: refuse(1), retries=3, sleep=clock.sleep))
    assert clock.slept == [0.001] * 3
    clock.slept.clear()
    with pytest.raises(RateLimited):  # a wait past the patience is not slept at all
        asyncio.run(
            wait_out_rate_limits(
                lambda: refuse(10**12), retries=3, patience_ms=60_000, sleep=clock.sleep
            )
        )
    assert clock.slept == []


def test_a_pacer_learns_the_bucket_s_rate_from_its_first_402s() -> None:
    """Past the burst, each request is refused once when 402s are only waited out; a
    pacer is refused a couple of times, then keeps to one request a token."""
    clock = Clock()
    bucket = Bucket(clock, burst=5, every_ms=10)
    pacer = Pacer(
        retries=5, patience_ms=60_000, max_spacing_ms=1_000, sleep=clock.sleep, clock=clock
    )

    async def read(pages: int) -> None:
        for _ in range(pages):
            await pacer(bucket.take)
            clock.now += 0.003  # the reader's own work on a page

    asyncio.run(read(200))
    assert bucket.refused <= 2 and pacer.spacing_ms == pytest.approx(10, abs=1)
    assert clock.now <= (200 - 5) * 0.011  # at the bucket's rate, near enough


def test_a_pacer_keeps_no_gap_wider_than_its_bound() -> None:
    clock = Clock()
    pacer = Pacer(retries=1, patience_ms=10**9, max_spacing_ms=500, sleep=clock.sleep, clock=clock)
    answers = iter([RateLimited("", 5_000), "answer"])

    async def ask() -> str:
        answer = next(answers)
        if isinstance(answer, RateLimited):
            raise answer
        return answer

    assert asyncio.run(pacer(ask)) == "answer"
    assert pacer.spacing_ms == 500
