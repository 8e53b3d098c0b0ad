"""The prekey directory over real sockets (SPEC §5)."""

from __future__ import annotations

import asyncio
import os

from blindrelay.protocol import limits
from blindrelay.protocol.crypto.keys import PreKeyBundle
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import (
    Bundle,
    BundleFetch,
    Error,
    Ok,
    OneTimePreKeyRecord,
    PrekeysLow,
    PrekeysUpload,
    SignedPreKeyRecord,
)
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay

from .conftest import ALL_BACKENDS, Clients, FakeClock, RawClient, db_rows, error_code, relay_with

BACKENDS = ALL_BACKENDS


async def fetch(client: RawClient, handle: str) -> Bundle | Error:
    frame = await client.request(lambda i: BundleFetch(id=i, handle=handle))
    assert isinstance(frame, Bundle | Error)
    return frame


async def test_a_bundle_verifies_with_the_end_to_end_layer(
    relay: RunningRelay, clients: Clients
) -> None:
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.upload_prekeys(one_time=2), Ok)
    alice = await clients.registered(relay.url, "alice")
    bundle = await fetch(alice, "bob")
    assert isinstance(bundle, Bundle) and bundle.one_time is not None
    assert (bundle.handle, bundle.kind, bundle.identity_key) == (
        "bob", "user", bytes(bob.key.verify_key),
    )  # fmt: skip
    PreKeyBundle(
        identity_key=bundle.identity_key,
        signed_prekey_id=bundle.signed_prekey.key_id,
        signed_prekey_public=bundle.signed_prekey.public,
        signed_prekey_signature=bundle.signed_prekey.signature,
        one_time_prekey_id=bundle.one_time.key_id,
        one_time_prekey_public=bundle.one_time.public,
    ).verify()


async def test_a_signed_prekey_with_a_bad_signature_is_refused(
    relay: RunningRelay, clients: Clients
) -> None:
    bob = await clients.registered(relay.url, "bob")
    forged = SignedPreKeyRecord(key_id=1, public=os.urandom(32), signature=os.urandom(64))
    frame = await bob.request(lambda i: PrekeysUpload(id=i, signed_prekey=forged))
    assert error_code(frame) == ErrorCode.INVALID_PREKEYS
    assert db_rows(relay.config, "SELECT COUNT(*) FROM signed_prekeys") == [(0,)]


async def test_a_one_time_prekey_id_already_stored_refuses_the_upload(
    relay: RunningRelay, clients: Clients
) -> None:
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.upload_prekeys(one_time=2, first_id=1), Ok)
    again = tuple(OneTimePreKeyRecord(key_id=n, public=os.urandom(32)) for n in (9, 2))
    frame = await bob.request(lambda i: PrekeysUpload(id=i, one_time=again))
    assert error_code(frame) == ErrorCode.INVALID_PREKEYS
    assert db_rows(relay.config, "SELECT key_id FROM one_time_prekeys ORDER BY key_id") == [
        (1,),
        (2,),
    ]


async def test_a_clash_with_an_upload_still_in_flight_is_refused_too(
    relay: RunningRelay, clients: Clients
) -> None:
    """SPEC §5.2: the event loop refuses what its reader shows; an upload whose clash
    is not committed yet is refused by the writer job, with the same ERROR 300."""
    bob = await clients.registered(relay.url, "bob")
    first, second = (
        PrekeysUpload(
            id=bob.request_id(),
            one_time=tuple(OneTimePreKeyRecord(key_id=n, public=os.urandom(32)) for n in ids),
        )
        for ids in ((1, 2), (2, 3))
    )
    await bob.send(first)
    await bob.send(second)
    assert isinstance(await bob.response(first.id), Ok)
    assert error_code(await bob.response(second.id)) == ErrorCode.INVALID_PREKEYS
    again = (OneTimePreKeyRecord(key_id=1, public=os.urandom(32)),)
    late = await bob.request(lambda i: PrekeysUpload(id=i, one_time=again))
    assert error_code(late) == ErrorCode.INVALID_PREKEYS
    assert db_rows(relay.config, "SELECT key_id FROM one_time_prekeys ORDER BY key_id") == [
        (1,),
        (2,),
    ]


async def test_an_upload_over_the_stored_cap_is_refused_whole(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, max_stored_one_time_prekeys=5) as relay:
        bob = await clients.registered(relay.url, "bob")
        assert isinstance(await bob.upload_prekeys(one_time=4, first_id=1), Ok)
        assert error_code(await bob.upload_prekeys(one_time=2, first_id=10)) == (
            ErrorCode.INVALID_PREKEYS
        )
        assert db_rows(config, "SELECT COUNT(*) FROM one_time_prekeys") == [(4,)]


async def test_unknown_account_and_missing_signed_prekey_look_the_same(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    await clients.registered(relay.url, "bob")  # no prekeys published
    unknown, unpublished = await fetch(alice, "nobody"), await fetch(alice, "bob")
    assert isinstance(unknown, Error) and isinstance(unpublished, Error)
    assert (unknown.code, unknown.reason) == (unpublished.code, unpublished.reason)
    assert unknown.code == ErrorCode.RECIPIENT_UNAVAILABLE


async def test_concurrent_fetches_never_get_the_same_one_time_prekey(
    relay: RunningRelay, clients: Clients
) -> None:
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.upload_prekeys(one_time=2), Ok)
    alice = await clients.registered(relay.url, "alice")
    carol = await clients.registered(relay.url, "carol")
    first, second = await asyncio.gather(fetch(alice, "bob"), fetch(carol, "bob"))
    assert isinstance(first, Bundle) and isinstance(second, Bundle)
    assert first.one_time is not None and second.one_time is not None
    assert first.one_time.key_id != second.one_time.key_id
    assert db_rows(relay.config, "SELECT COUNT(*) FROM one_time_prekeys") == [(0,)]


async def test_with_none_left_the_bundle_has_no_one_time_prekey(
    relay: RunningRelay, clients: Clients
) -> None:
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.upload_prekeys(one_time=1), Ok)
    alice = await clients.registered(relay.url, "alice")
    assert (await fetch(alice, "bob")).one_time is not None  # type: ignore[union-attr]
    empty = await fetch(alice, "bob")
    assert isinstance(empty, Bundle) and empty.one_time is None


async def test_the_owner_is_told_when_one_time_prekeys_run_low(
    relay: RunningRelay, clients: Clients
) -> None:
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.upload_prekeys(one_time=limits.PREKEY_LOW_WATER + 1), Ok)
    alice = await clients.registered(relay.url, "alice")
    await fetch(alice, "bob")  # leaves exactly PREKEY_LOW_WATER: no notice yet
    await fetch(alice, "bob")
    low = await bob.push(PrekeysLow)
    assert low.remaining == limits.PREKEY_LOW_WATER - 1


async def test_bundle_fetches_are_rate_limited_per_requester(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, bundle_burst=2, bundle_rate_per_min=60.0) as relay:
        bob = await clients.registered(relay.url, "bob")
        assert isinstance(await bob.upload_prekeys(one_time=10), Ok)
        alice = await clients.registered(relay.url, "alice")
        carol = await clients.registered(relay.url, "carol")
        assert isinstance(await fetch(alice, "bob"), Bundle)
        assert isinstance(await fetch(alice, "bob"), Bundle)
        limited = await fetch(alice, "bob")
        assert isinstance(limited, Error) and limited.code == ErrorCode.RATE_LIMITED
        assert limited.retry_after == 1000  # one token per second at 60/min
        assert isinstance(await fetch(carol, "bob"), Bundle)  # per requester
        clock.advance(1000)
        assert isinstance(await fetch(alice, "bob"), Bundle)


async def test_sixty_accounts_cannot_drain_an_offline_users_one_time_prekeys(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """Issue 13 item 2: six throwaway accounts took all 100 one-time prekeys of an offline
    user. The relay now hands out at most ONE_TIME_PREKEY_BURST per owner (refilling at
    ONE_TIME_PREKEY_RATE_PER_H); everyone else still gets a bundle, without one (SPEC §5.3),
    and the owner sees at login what is left."""
    bob = await clients.registered(relay.url, "bob")
    for first_id in (1, 101):
        assert isinstance(await bob.upload_prekeys(one_time=100, first_id=first_id), Ok)
    await bob.close()
    served: list[Bundle] = []
    for n in range(60):
        sybil = await clients.registered(relay.url, f"sybil{n}")
        for _ in range(3):  # within the per-requester limit
            bundle = await fetch(sybil, "bob")
            assert isinstance(bundle, Bundle)
            served.append(bundle)
        await sybil.close()
    with_key = [b for b in served if b.one_time is not None]
    assert len(with_key) == limits.ONE_TIME_PREKEY_BURST
    assert len({b.one_time.key_id for b in with_key if b.one_time}) == len(with_key)
    assert all(b.signed_prekey.key_id == 1 for b in served)  # the last-resort path
    _, welcome = await clients.logged_in(relay.url, "bob", bob.key)
    assert welcome.one_time_prekeys == 200 - limits.ONE_TIME_PREKEY_BURST
    clock.advance(3600 * 1000)  # the owner's budget refills, whoever asks
    late = await clients.registered(relay.url, "late")
    refilled = [await fetch(late, "bob") for _ in range(11)]
    assert sum(isinstance(b, Bundle) and b.one_time is not None for b in refilled) == 10
