"""SPEC §5 Prekey directory: uploads, bundles, one-time keys served once, rate limits."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.crypto.keys import IdentityKeyPair, signed_prekey_message, verify_signature
from blindrelay.protocol.frames import (
    Bundle,
    BundleFetch,
    Error,
    Ok,
    PrekeysLow,
    PrekeysUpload,
    SignedPreKeyRecord,
)

from .wire import new_handle, one_time_prekeys, rng, signed_prekey


def _code(frame) -> int | None:
    return frame.code if isinstance(frame, Error) else None


@pytest.mark.spec("5.2")
async def test_upload_is_answered_ok_and_counted_at_the_next_welcome(relay):
    """SPEC: an upload that passes its checks is answered OK; WELCOME reports the supply."""
    alice = await relay.user()
    spk = signed_prekey(alice.account.key)
    ok = await alice.request(
        lambda i: PrekeysUpload(id=i, signed_prekey=spk, one_time=one_time_prekeys(1, 5))
    )
    assert isinstance(ok, Ok)
    again = await relay.login(alice)
    assert (again.welcome.has_signed_prekey, again.welcome.one_time_prekeys) == (True, 5)


@pytest.mark.spec("5.2")
@pytest.mark.parametrize("forgery", ["other_key", "bit_flip"])
async def test_signed_prekey_with_a_bad_signature_gets_300(relay, forgery):
    """SPEC: "The relay MUST verify the signed prekey's signature with the account's
    identity key before storing it (ERROR 300 INVALID_PREKEYS if it fails)"."""
    alice = await relay.user()
    if forgery == "other_key":
        spk = signed_prekey(IdentityKeyPair.generate(rng))
    else:
        good = signed_prekey(alice.account.key)
        signature = bytes([good.signature[0] ^ 1]) + good.signature[1:]
        spk = SignedPreKeyRecord(key_id=1, public=good.public, signature=signature)
    error = await alice.request(lambda i: PrekeysUpload(id=i, signed_prekey=spk))
    assert _code(error) == 300
    again = await relay.login(alice)
    assert again.welcome.has_signed_prekey is False


@pytest.mark.spec("5.1")
@pytest.mark.spec("5.2")
async def test_one_time_prekey_id_already_stored_gets_300(relay):
    """SPEC §5.1: "A one-time prekey's id MUST differ from those of the owner's other
    one-time prekeys stored at the relay"; §5.2: "A one-time prekey whose id is already
    stored replaces nothing: the upload is refused with ERROR 300"."""
    alice = await relay.user(one_time=3)
    error = await alice.request(lambda i: PrekeysUpload(id=i, one_time=one_time_prekeys(3, 2)))
    assert _code(error) == 300
    again = await relay.login(alice)
    assert again.welcome.one_time_prekeys == 3


@pytest.mark.spec("5.2")
async def test_upload_without_keys_or_with_duplicate_ids_gets_100(relay):
    """SPEC: "At least one key MUST be present, and key ids within a frame MUST be
    distinct (ERROR 100)"."""
    alice = await relay.user()
    keys = one_time_prekeys(1, 1)
    for one_time in ([], [keys[0], keys[0]]):
        request_id = alice.next_id()
        data = msgpack.packb(
            {
                "t": 10,
                "id": request_id,
                "one_time": [{"key_id": k.key_id, "public": k.public} for k in one_time],
            }
        )
        await alice.send_raw(data, expect_re=request_id)
        assert _code(await alice.response(request_id)) == 100


@pytest.mark.spec("5.2")
async def test_upload_over_the_stored_maximum_is_refused_whole(relay):
    """SPEC: "Uploads that would take the stored supply over MAX_STORED_ONE_TIME_PREKEYS
    are refused whole with ERROR 300"."""
    alice = await relay.user(one_time=limits.MAX_STORED_ONE_TIME_PREKEYS - 1)
    error = await alice.request(lambda i: PrekeysUpload(id=i, one_time=one_time_prekeys(5000, 2)))
    assert _code(error) == 300
    again = await relay.login(alice)
    assert again.welcome.one_time_prekeys == limits.MAX_STORED_ONE_TIME_PREKEYS - 1


@pytest.mark.spec("5.3")
async def test_bundle_carries_kind_identity_signed_prekey_and_one_one_time_key(relay):
    """SPEC: BUNDLE has "the account's kind, identity key, signed prekey and, if any is
    left, exactly one one-time prekey"; the signed prekey verifies under the identity key."""
    bob = await relay.business(one_time=1)
    alice = await relay.user()
    bundle = await alice.request(lambda i: BundleFetch(id=i, handle=bob.handle))
    assert isinstance(bundle, Bundle)
    assert (bundle.handle, bundle.kind, bundle.identity_key) == (
        bob.handle,
        "business",
        bob.account.public,
    )
    verify_signature(
        bundle.identity_key,
        signed_prekey_message(bundle.signed_prekey.public),
        bundle.signed_prekey.signature,
    )
    assert bundle.one_time is not None and bundle.one_time.key_id == 1


@pytest.mark.spec("5.3")
async def test_each_fetch_consumes_exactly_one_one_time_key_until_none_is_left(relay):
    """SPEC: the one-time prekey is removed "atomically with serving it: two fetches,
    concurrent or not, never receive the same one-time prekey. With none left the
    bundle has no one_time field"."""
    bob = await relay.user(one_time=6)
    fetchers = [await relay.user() for _ in range(3)]

    async def fetch_twice(peer):
        frames = [BundleFetch(id=peer.next_id(), handle=bob.handle) for _ in range(2)]
        for frame in frames:
            await peer.send(frame)
        return [await peer.response(f.id) for f in frames]

    bundles = [b for pair in await asyncio.gather(*map(fetch_twice, fetchers)) for b in pair]
    ids = [b.one_time.key_id for b in bundles if isinstance(b, Bundle) and b.one_time]
    assert sorted(ids) == [1, 2, 3, 4, 5, 6]
    last = await fetchers[0].request(lambda i: BundleFetch(id=i, handle=bob.handle))
    assert isinstance(last, Bundle) and last.one_time is None
    again = await relay.login(bob)
    assert again.welcome.one_time_prekeys == 0


@pytest.mark.spec("5.3")
async def test_an_owners_one_time_keys_are_handed_out_within_its_budget_whoever_asks(relay):
    """SPEC §5.3: "the relay hands out at most ONE_TIME_PREKEY_BURST one-time prekeys of one
    owner … whoever asks. When the owner's budget is spent the relay MUST still serve the
    bundle, without one_time" (with the relay's default ONE_TIME_PREKEY_BURST)."""
    burst = limits.ONE_TIME_PREKEY_BURST
    bob = await relay.user(one_time=burst + 10)
    bundles = []
    for _ in range(burst // 2 + 3):  # many requesters, each within its own rate limit
        fetcher = await relay.user()
        for _ in range(2):
            bundle = await fetcher.request(lambda i: BundleFetch(id=i, handle=bob.handle))
            assert isinstance(bundle, Bundle), bundle
            bundles.append(bundle)
        await fetcher.close()
    with_key = [b for b in bundles if b.one_time is not None]
    assert len(with_key) == burst
    assert len(bundles) - len(with_key) == 6
    again = await relay.login(bob)
    assert again.welcome.one_time_prekeys == 10


@pytest.mark.spec("5.3")
async def test_unknown_account_and_account_without_signed_prekey_get_the_same_400(relay):
    """SPEC: "an unknown account, an account without a signed prekey, and a fetch the
    consent rules refuse (§7.3) all get the same ERROR 400 RECIPIENT_UNAVAILABLE"."""
    bare = await relay.user()
    alice = await relay.user()
    answers = []
    for handle in (new_handle("nobody"), bare.handle):
        await alice.send(BundleFetch(id=77, handle=handle))
        answers.append(await alice.response_raw(77))
    assert _code(answers[0].frame) == 400
    assert answers[0].raw == answers[1].raw


@pytest.mark.spec("5.3")
async def test_bundle_fetches_are_rate_limited_with_retry_after(relay):
    """SPEC: "Fetches are rate-limited per requester (… ERROR 402 RATE_LIMITED with
    retry_after)", at the latest after BUNDLE_FETCH_BURST quick fetches."""
    bob = await relay.user(signed=True)
    alice = await relay.user()
    frames = [BundleFetch(id=alice.next_id(), handle=bob.handle) for _ in range(60)]
    for frame in frames:
        await alice.send(frame)
    answers = [await alice.response(f.id) for f in frames]
    limited = [a for a in answers if _code(a) == 402]
    assert limited, "60 fetches in a burst were never rate-limited"
    assert all(a.retry_after is not None and a.retry_after > 0 for a in limited)
    assert all(isinstance(a, Bundle) for a in answers[: limits.BUNDLE_FETCH_BURST])
    # Another requester is not affected by alice's bucket.
    carol = await relay.user()
    assert isinstance(await carol.request(lambda i: BundleFetch(id=i, handle=bob.handle)), Bundle)


@pytest.mark.spec("5.4")
async def test_owner_is_told_when_one_time_keys_run_low(relay):
    """SPEC: "When a fetch leaves an account with fewer than PREKEY_LOW_WATER one-time
    prekeys, the relay pushes PREKEYS_LOW (remaining) to that account if it is connected"."""
    bob = await relay.user(one_time=3)
    alice = await relay.user()
    assert isinstance(await alice.request(lambda i: BundleFetch(id=i, handle=bob.handle)), Bundle)
    low = await bob.push(PrekeysLow)
    assert low.remaining == 2


@pytest.mark.spec("5.1")
async def test_a_one_time_prekey_may_share_the_signed_prekeys_id(relay):
    """SPEC §5.1: "a one-time prekey MAY have the id of the signed prekey … and the relay
    MUST accept and serve both"."""
    bob = await relay.user()
    spk = signed_prekey(bob.account.key, key_id=7)
    (otk,) = one_time_prekeys(7, 1)
    ok = await bob.request(lambda i: PrekeysUpload(id=i, signed_prekey=spk, one_time=(otk,)))
    assert isinstance(ok, Ok), ok
    alice = await relay.user()
    bundle = await alice.request(lambda i: BundleFetch(id=i, handle=bob.handle))
    assert isinstance(bundle, Bundle)
    assert (bundle.signed_prekey, bundle.one_time) == (spk, otk)
