"""SPEC §10 Limits: every request type is rate-limited per account, before any work.

The relay under test is assumed to run with the *default* limits of §10 (the
bucket sizes come from ``blindrelay.protocol.limits``): a burst of quick requests
one past the bucket gets ERROR 402 with ``retry_after``, while the requests within
the burst are served as usual. Each request type is driven through one fresh
account, so buckets of other tests never interfere.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.frames import (
    Error,
    Frame,
    PrekeysUpload,
    ProfileFetch,
    ProfilePut,
    RotateIdentity,
    StatementsList,
    UsageFetch,
)

from .wire import Peer, one_time_prekeys, rng

_BAD_SIGNATURE = b"\x00" * 64
_EXTRA = 10
"""Requests sent past the burst: enough that some find the bucket empty even though
it refills meanwhile (the fastest default refills 10 tokens a second)."""


async def _pipelined(peer: Peer, build: Callable[[int], Frame], count: int) -> list[Frame]:
    """Send ``count`` requests back to back, then read their answers in order."""
    sent = [build(peer.next_id()) for _ in range(count)]
    for frame in sent:
        await peer.send(frame)
    return [await peer.response(frame.id) for frame in sent]  # type: ignore[attr-defined]


def _limited(frame: Frame) -> bool:
    return isinstance(frame, Error) and frame.code == 402


def _assert_limited_after(answers: list[Frame], burst: int) -> None:
    """None of the first ``burst`` answers is 402; at least one later one is, with
    ``retry_after`` ≥ 1."""
    assert not any(_limited(a) for a in answers[:burst]), answers[:burst]
    limited = [a for a in answers[burst:] if _limited(a)]
    assert limited, f"{len(answers)} quick requests were never rate-limited"
    assert all(isinstance(a, Error) and a.retry_after and a.retry_after >= 1 for a in limited)


@pytest.mark.spec("10")
@pytest.mark.spec("5.2")
async def test_prekey_uploads_are_rate_limited_and_a_refused_one_stores_nothing(relay):
    """SPEC §10: "MUST answer a request whose bucket is empty with ERROR 402
    RATE_LIMITED carrying retry_after … and do nothing else for it"."""
    alice = await relay.user()
    count = limits.PREKEYS_UPLOAD_BURST + _EXTRA
    answers = await _pipelined(
        alice,
        lambda i: PrekeysUpload(id=i, one_time=one_time_prekeys(i, 1)),
        count,
    )
    _assert_limited_after(answers, limits.PREKEYS_UPLOAD_BURST)
    stored = sum(not isinstance(a, Error) for a in answers)
    again = await relay.login(alice)
    assert again.welcome.one_time_prekeys == stored


@pytest.mark.spec("10")
@pytest.mark.spec("3.4")
async def test_identity_rotations_are_rate_limited_even_when_they_fail(relay):
    """SPEC §10: each request takes a token "whatever its outcome"; a rotation with
    bad signatures (ERROR 500) costs one like any other."""
    alice = await relay.user()
    new_key = IdentityKeyPair.generate(rng).public

    def rotation(i: int) -> Frame:
        return RotateIdentity(
            id=i, new_identity_key=new_key, issued_at=alice.relay_now(),
            old_signature=_BAD_SIGNATURE, new_signature=_BAD_SIGNATURE,
        )  # fmt: skip

    answers = await _pipelined(alice, rotation, limits.ROTATE_IDENTITY_BURST + _EXTRA)
    _assert_limited_after(answers, limits.ROTATE_IDENTITY_BURST)
    assert all(isinstance(a, Error) and a.code in (500, 402) for a in answers)


@pytest.mark.spec("10")
@pytest.mark.spec("7.6")
async def test_statement_listings_are_rate_limited(relay):
    alice = await relay.user()
    count = limits.STATEMENTS_LIST_BURST + 3 * _EXTRA
    answers = await _pipelined(alice, lambda i: StatementsList(id=i, after=0), count)
    _assert_limited_after(answers, limits.STATEMENTS_LIST_BURST)


@pytest.mark.spec("10")
@pytest.mark.spec("8.2")
async def test_profile_fetches_are_rate_limited(relay):
    """PROFILE_FETCH would otherwise tell ~2,000 handles a second apart (§7.7)."""
    shop = await relay.business()
    alice = await relay.user()
    count = limits.PROFILE_FETCH_BURST + _EXTRA
    answers = await _pipelined(alice, lambda i: ProfileFetch(id=i, handle=shop.handle), count)
    _assert_limited_after(answers, limits.PROFILE_FETCH_BURST)


@pytest.mark.spec("10")
@pytest.mark.spec("8.2")
async def test_profile_puts_are_rate_limited_before_the_kind_is_checked(relay):
    """A user's PROFILE_PUT is refused (ERROR 202) — but only while its bucket lasts."""
    alice = await relay.user()
    count = limits.PROFILE_PUT_BURST + _EXTRA
    answers = await _pipelined(alice, lambda i: ProfilePut(id=i, profile=b"\x80"), count)
    _assert_limited_after(answers, limits.PROFILE_PUT_BURST)
    assert all(isinstance(a, Error) and a.code in (202, 402) for a in answers)


@pytest.mark.spec("10")
@pytest.mark.spec("8.4")
async def test_usage_fetches_are_rate_limited(relay):
    shop = await relay.business()
    count = limits.USAGE_FETCH_BURST + _EXTRA
    answers = await _pipelined(shop, lambda i: UsageFetch(id=i, month="2027-01"), count)
    _assert_limited_after(answers, limits.USAGE_FETCH_BURST)


@pytest.mark.spec("10")
async def test_another_account_keeps_its_own_bucket(relay):
    """The buckets are per account: one account's empty bucket refuses nobody else."""
    alice, bob = await relay.user(), await relay.user()
    count = limits.STATEMENTS_LIST_BURST + 3 * _EXTRA
    answers = await _pipelined(alice, lambda i: StatementsList(id=i, after=0), count)
    assert any(_limited(a) for a in answers)
    assert not _limited(await bob.request(lambda i: StatementsList(id=i, after=0)))
