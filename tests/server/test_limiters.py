"""Which actions are rate-limited and how (server/limiters.py): the tables built
from the configuration, and an account's buckets following it between relay
processes (SPEC §10)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from blindrelay.protocol.errors import RateLimited
from blindrelay.server.config import RelayConfig
from blindrelay.server.limiters import Limiters

from ..relays import FakeClock


def test_an_account_taken_over_from_another_process_starts_with_empty_buckets() -> None:
    """SPEC §10: N processes never give one account N buckets. The pair buckets are
    keyed by the pair, and every one the account sends on is emptied too (T63), those
    of other senders, to it as well, are left alone."""
    clock = FakeClock()
    limiters = Limiters.from_config(RelayConfig(), clock)
    limiters.take_over("alice", clock())
    for buckets in limiters.per_account():
        with pytest.raises(RateLimited):
            buckets.take("alice")
        buckets.take("bob")  # other accounts keep theirs
    for to in ("bob", "carol"):
        with pytest.raises(RateLimited) as refused:
            limiters.send_pair.take(("alice", to))
        assert refused.value.retry_after_ms == 10  # SEND_RATE_PER_S_PAIR: 100 a second
    limiters.send_pair.take(("bob", "alice"))
    assert limiters.send_pair not in limiters.per_account()


def test_a_pair_bucket_taken_over_holds_what_refilled_since_and_no_more() -> None:
    """T63: the pair buckets follow their sender as the account's do — counted as emptied
    at the take-over's time, then refilling at their rate up to their burst; one spent
    here after that time keeps its count."""
    clock = FakeClock()
    limiters = Limiters.from_config(RelayConfig(send_rate_pair=2.0, send_burst_pair=3), clock)
    limiters.send_pair.take(("alice", "carol"))
    limiters.take_over("alice", clock() - 1000)  # two tokens refilled since
    for _ in range(2):
        limiters.send_pair.take(("alice", "bob"))
    with pytest.raises(RateLimited):
        limiters.send_pair.take(("alice", "bob"))
    clock.advance(500)
    limiters.send_pair.take(("alice", "bob"))
    for _ in range(3):  # counted later than the time taken over from: kept as it was
        limiters.send_pair.take(("alice", "carol"))
    with pytest.raises(RateLimited):
        limiters.send_pair.take(("alice", "carol"))
    clock.advance(10_000)
    for _ in range(3):  # full again, and no fuller
        limiters.send_pair.take(("alice", "dave"))
    with pytest.raises(RateLimited):
        limiters.send_pair.take(("alice", "dave"))


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


_FOLLOW_NO_ACCOUNT = {"send_pair", "statement"}
"""SPEC §10 "One relay, many processes": the pair bucket is keyed by the pair (and follows
its sender apart, T63), the STATEMENT bucket is kept per process (the store keeps the
account's statement budget, T64); every other bucket is the account's and follows it to
another process — the log-fetch bucket too, once logged in (T80; before, it is the
source's, kept per process)."""


def test_every_per_account_bucket_follows_the_account_and_no_other() -> None:
    """SPEC §10: a bucket left out of ``per_account`` would refill in full whenever its
    account moves to another process (a burst per worker per login)."""
    limiters = Limiters.from_config(RelayConfig(), FakeClock())
    expected = [
        getattr(limiters, f.name) for f in fields(Limiters) if f.name not in _FOLLOW_NO_ACCOUNT
    ]
    held = limiters.per_account()
    assert len(held) == len(expected)
    assert all(any(b is e for b in held) for e in expected)


_RATES = {
    # bucket: (its rate's config field, the rate's period in ms, its burst's config field)
    "send_user": ("send_rate_user", 1_000, "send_burst_user"),
    "send_business": ("send_rate_business", 1_000, "send_burst_business"),
    "send_pair": ("send_rate_pair", 1_000, "send_burst_pair"),
    "bundle_fetch": ("bundle_rate_per_min", 60_000, "bundle_burst"),
    "consent_request": ("consent_request_rate_per_h", 3_600_000, "consent_request_burst"),
    "prekeys_upload": ("prekeys_upload_rate_per_min", 60_000, "prekeys_upload_burst"),
    "rotate_identity": ("rotate_identity_rate_per_h", 3_600_000, "rotate_identity_burst"),
    "statement": ("statement_rate_per_h", 3_600_000, "statement_burst"),
    "statements_list": ("statements_list_rate_per_min", 60_000, "statements_list_burst"),
    "profile_put": ("profile_put_rate_per_min", 60_000, "profile_put_burst"),
    "profile_fetch": ("profile_fetch_rate_per_min", 60_000, "profile_fetch_burst"),
    "usage_fetch": ("usage_fetch_rate_per_min", 60_000, "usage_fetch_burst"),
    "log_fetch": ("log_fetch_rate_per_min", 60_000, "log_fetch_burst"),
}


def test_every_bucket_has_its_own_configured_rate_and_burst() -> None:
    """SPEC §10's table: each bucket is built from its own rate (in its own unit) and
    burst. Every bucket gets a different rate and burst here, so one built from another's
    setting, or with a rate per minute read per hour, holds or refills wrongly."""
    assert set(_RATES) == {f.name for f in fields(Limiters)}  # a new bucket needs a row
    settings: dict[str, float] = {}
    for n, (rate, _period, burst) in enumerate(_RATES.values()):
        settings[rate], settings[burst] = float(n + 1), n + 2
    clock = FakeClock()
    limiters = Limiters.from_config(RelayConfig(**settings), clock)  # type: ignore[arg-type]
    for n, (name, (_rate, period, _burst)) in enumerate(_RATES.items()):
        buckets = getattr(limiters, name)
        for _ in range(n + 2):
            buckets.take("alice")
        with pytest.raises(RateLimited) as refused:
            buckets.take("alice")
        assert abs(refused.value.retry_after_ms - period / (n + 1)) <= 1, name
