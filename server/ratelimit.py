"""Token buckets keyed by account or account pair, on an injected clock (SPEC §10).

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; an action
takes one token or is refused with the time until one is back, which becomes
the ERROR's ``retry_after``. A full bucket is indistinguishable from an absent
one, so full buckets are dropped to bound memory — in amortised constant time:
after a prune the next one waits until the table has doubled, so keys an
attacker chooses (source addresses) cannot make every take rescan them all.

Not here: which actions are limited and with which rates (``delivery``,
``directory``, ``config``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable

from blindrelay.protocol.errors import RateLimited

Clock = Callable[[], int]
"""Milliseconds since the epoch; tests pass a fake."""


def wall_clock_ms() -> int:
    """The real :data:`Clock`."""
    return time.time_ns() // 1_000_000


_PRUNE_AT = 10_000


class TokenBuckets:
    """One token bucket per key, all with the same rate and burst."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate_per_ms = rate_per_s / 1000.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, int]] = {}
        """key → (tokens, time they were counted at, ms)."""
        self._prune_at = _PRUNE_AT

    def __len__(self) -> int:
        """Keys held: what the table costs in memory. Full buckets are dropped when it
        grows, so keys an attacker chooses cost only while their buckets are spent."""
        return len(self._buckets)

    def take(self, key: Hashable) -> None:
        """Spend one token for ``key`` or raise :class:`RateLimited` with ``retry_after``."""
        now = self._clock()
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            retry_after = math.ceil((1.0 - tokens) / self.rate_per_ms)
            raise RateLimited("token bucket empty", retry_after_ms=max(1, retry_after))
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._prune_at:
            self._prune(now)
            self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))

    def spent_at(self, key: Hashable, at: int) -> None:
        """Count ``key``'s bucket as emptied at ``at``: from now on it holds what has
        refilled since (at most ``burst``). For taking over an account whose last
        connection was served by another relay process (SPEC §10)."""
        self._buckets[key] = (0.0, at)

    def _tokens(self, key: Hashable, now: int) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0, now - at) * self.rate_per_ms)

    def _prune(self, now: int) -> None:
        full = [key for key in self._buckets if self._tokens(key, now) >= self.burst]
        for key in full:
            del self._buckets[key]


class PairBuckets(TokenBuckets):
    """Token buckets keyed by ``(account, other)`` (the per-pair SEND bucket), all of one
    account's countable as emptied at once: :meth:`spent_at_owner`, when the account is
    taken over from another relay process (SPEC §10, threat model T63). Its pairs are
    not enumerated: the time is kept per account, and a pair bucket last counted before
    it holds what has refilled since then."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        super().__init__(rate_per_s, burst, clock)
        self._floors: dict[Hashable, int] = {}
        """account → when all its pair buckets were last counted as emptied."""
        self._floors_prune_at = _PRUNE_AT

    def spent_at_owner(self, owner: Hashable, at: int) -> None:
        """Count every bucket ``(owner, …)`` as emptied at ``at`` (as :meth:`spent_at`)."""
        self._floors[owner] = at
        if len(self._floors) > self._floors_prune_at:
            # A floor further back than a whole refill empties nothing any more.
            horizon = self._clock() - self.burst / self.rate_per_ms
            self._floors = {o: f for o, f in self._floors.items() if f > horizon}
            self._floors_prune_at = max(_PRUNE_AT, 2 * len(self._floors))

    def _tokens(self, key: Hashable, now: int) -> float:
        if self._floors and type(key) is tuple and key:
            floor = self._floors.get(key[0])
            if floor is not None:
                stored = self._buckets.get(key)
                if stored is None or stored[1] < floor:
                    return min(self.burst, max(0, now - floor) * self.rate_per_ms)
        return super()._tokens(key, now)

    def _prune(self, now: int) -> None:
        # A full bucket is dropped only if its account's floor would not empty it again.
        refill_ms = self.burst / self.rate_per_ms
        for key in [key for key in self._buckets if self._tokens(key, now) >= self.burst]:
            floor = self._floors.get(key[0]) if type(key) is tuple and key else None
            if floor is None or now - floor >= refill_ms:
                del self._buckets[key]
