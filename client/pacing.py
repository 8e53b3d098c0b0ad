"""Waiting out the relay's pacing (SPEC §9, §10).

An ERROR 402 RATE_LIMITED is not a refusal: it carries ``retry_after``, the
milliseconds after which the same request can succeed. :func:`wait_out_rate_limits`
asks again after it — a bounded number of times, and for a bounded total wait, so a
relay that answers 402 for ever, or names a wait of years, ends the caller with its
:class:`RateLimited` rather than a hang. :class:`Pacer` also spaces a run of requests
by the longest wait the relay named, so a reader that asks for page after page meets
a 402 about once, not once a request: before a login every 402 counts towards the
connection's error budget (§4.5), and the relay closes a connection past it.

Not here: the outbox's retries of SENDs (``outbox``), answered asynchronously.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from blindrelay.protocol.errors import RateLimited

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


async def wait_out_rate_limits(
    ask: Callable[[], Awaitable[T]],
    *,
    retries: int,
    patience_ms: int | None = None,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """``ask()``'s answer, asked again after each RateLimited's ``retry_after`` up to
    ``retries`` times while the waits add up to at most ``patience_ms`` (None: no
    bound); past either, the last RateLimited is raised — at once when the wait it
    names would go past ``patience_ms``: it is not slept first."""
    waited = 0
    attempt = 0
    while True:
        try:
            return await ask()
        except RateLimited as exc:
            wait = max(exc.retry_after_ms, 1)
            if attempt >= retries or (patience_ms is not None and waited + wait > patience_ms):
                raise
            attempt += 1
            waited += wait
            await sleep(wait / 1000)


class Pacer:
    """Requests through :func:`wait_out_rate_limits`, each started at least
    ``spacing_ms`` after the one before: what the relay's 402s show of its bucket.

    A 402's ``retry_after`` R is at most the time the bucket takes to refill one token
    (SPEC §10). A request that got its token only after waiting out a 402 left the
    bucket empty; a 402 ``e`` after it started, ``k`` answered requests later, says
    ``k + 1`` tokens take ``e + R`` — the bucket's rate, once we ask faster than it
    refills. The longest gap so learned (at most ``max_spacing_ms``) is kept, so a reader
    asking for page after page learns the rate from its first 402s past the burst and
    keeps to it. Only a bucket emptied or shared behind our back (a relay taking over an
    account counts it as just spent) teaches a wider gap than its rate, within the bound.
    """

    def __init__(
        self,
        *,
        retries: int,
        patience_ms: int,
        max_spacing_ms: int,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retries = retries
        self.patience_ms = patience_ms
        self.max_spacing_ms = max_spacing_ms
        self.spacing_ms = 0.0
        """The gap kept between the starts of two requests (0 until a 402)."""
        self._sleep = sleep
        self._clock = clock
        self._next_at = 0.0
        """When the next request may start (``clock`` seconds): taken in turn, so
        requests made at once are spaced too."""
        self._refused = False
        """The last answer was a 402."""
        self._emptied_at: float | None = None
        """When the last request answered after a 402 started: it took the bucket's last
        token (``clock`` seconds); None until one was."""
        self._taken = 0
        """Requests answered since ``_emptied_at``'s."""

    async def __call__(self, ask: Callable[[], Awaitable[T]]) -> T:
        """``ask()``'s answer, in its turn, waiting out the relay's 402s."""

        async def paced() -> T:
            now = self._clock()
            start = max(now, self._next_at)
            self._next_at = start + self.spacing_ms / 1000
            if start > now:
                await self._sleep(start - now)
            began, emptied_at = self._clock(), self._emptied_at
            # A sleep that ran late is not made up for by a shorter gap after it.
            self._next_at = max(self._next_at, began + self.spacing_ms / 1000)
            try:
                answer = await ask()
            except RateLimited as exc:
                if emptied_at is None:
                    refill = float(exc.retry_after_ms)
                else:
                    since = (began - emptied_at) * 1000
                    refill = (since + exc.retry_after_ms) / (self._taken + 1)
                self.spacing_ms = max(self.spacing_ms, min(refill, self.max_spacing_ms))
                self._refused = True
                raise
            if self._refused:
                self._emptied_at, self._taken = began, 0
            else:
                self._taken += 1
            self._refused = False
            return answer

        return await wait_out_rate_limits(
            paced, retries=self.retries, patience_ms=self.patience_ms, sleep=self._sleep
        )


__all__ = ["Pacer", "wait_out_rate_limits"]
