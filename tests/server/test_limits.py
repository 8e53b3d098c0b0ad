"""Queue cap, TTL, delivery window, rate limits and intents (SPEC §6.2–6.4, §10)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import (
    Ack,
    BillFetch,
    Deliver,
    Discoverable,
    Error,
    Frame,
    PrekeysUpload,
    ProfileFetch,
    ProfilePut,
    RotateIdentity,
    Sent,
    SignedPreKeyRecord,
    StatementsList,
    UsageFetch,
)
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay

from .conftest import Clients, FakeClock, RawClient, db_rows, error_code, relay_with, until
from .consent_helpers import state, stated


async def test_the_queue_cap_refuses_more_but_resends_still_succeed(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, queue_cap=2) as relay:
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        await bob.close()
        first_id = os.urandom(16)
        assert isinstance(await alice.send_message("bob", b"1", msg_id=first_id), Sent)
        assert isinstance(await alice.send_message("bob", b"2"), Sent)
        assert error_code(await alice.send_message("bob", b"3")) == ErrorCode.QUEUE_FULL
        assert isinstance(await alice.send_message("bob", b"1", msg_id=first_id), Sent)
        assert db_rows(config.db_path, "SELECT COUNT(*) FROM queue") == [(2,)]


async def test_envelopes_older_than_the_ttl_are_purged(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    await bob.close()
    msg_id = os.urandom(16)
    await alice.send_message("bob", b"old", msg_id=msg_id)
    clock.advance(relay.config.queue_ttl_ms - 1)
    await alice.send_message("bob", b"young")
    assert await relay.housekeeping.purge_expired() == (0, 0)
    clock.advance(2)
    assert await relay.housekeeping.purge_expired() == (1, 1)
    bob2, welcome = await clients.logged_in(relay.url, "bob", bob.key)
    assert welcome.queued == 1
    assert (await bob2.push(Deliver)).body == b"young"
    # The msg_id is forgotten with it: the same id is now a new message.
    assert isinstance(await alice.send_message("bob", b"reborn", msg_id=msg_id), Sent)


async def test_expired_envelopes_are_not_delivered_even_before_the_purge(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    await bob.close()
    await alice.send_message("bob", b"stale")
    clock.advance(relay.config.queue_ttl_ms + 1)
    await alice.send_message("bob", b"fresh")
    bob2, welcome = await clients.logged_in(relay.url, "bob", bob.key)
    assert welcome.queued == 1
    assert (await bob2.push(Deliver)).body == b"fresh"


async def test_no_more_than_the_window_is_in_flight_until_acked(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, delivery_window=2) as relay:
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        for n in range(5):
            assert isinstance(await alice.send_message("bob", b"%d" % n), Sent)
        first, second = await bob.deliveries(2)
        # A round trip after all five commits: a third DELIVER would be ahead of it.
        assert isinstance(await bob.send_message("alice", b"sync"), Sent)
        assert not any(isinstance(frame, Deliver) for frame in bob.inbox)
        await bob.send(Ack(delivery_ids=(first.delivery_id,)))
        third = await bob.push(Deliver)
        await bob.send(Ack(delivery_ids=(second.delivery_id, third.delivery_id)))
        rest = await bob.deliveries(2)
        assert [d.body for d in (first, second, third, *rest)] == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_user_account_is_rate_limited(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, send_burst_user=3, send_rate_user=2.0) as relay:
        alice = await clients.registered(relay.url, "alice")
        await clients.registered(relay.url, "bob")
        await clients.registered(relay.url, "carol")
        for to in ("bob", "carol", "bob"):
            assert isinstance(await alice.send_message(to, b"x"), Sent)
        limited = await alice.send_message("carol", b"x")
        assert isinstance(limited, Error) and limited.code == ErrorCode.RATE_LIMITED
        assert limited.retry_after == 500
        clock.advance(500)
        assert isinstance(await alice.send_message("carol", b"x"), Sent)


async def test_a_business_account_has_its_own_budget(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(
        config, clock, send_burst_user=1, send_burst_business=3, send_burst_pair=100
    ) as relay:
        airline = await clients.registered(relay.url, "airline", "business")
        bob = await clients.registered(relay.url, "bob")
        # Bob writes first: the service window lets the airline reply (SPEC §7.3).
        assert isinstance(await bob.send_message("airline", b"hello"), Sent)
        for _ in range(3):
            assert isinstance(await airline.send_message("bob", b"x"), Sent)
        assert error_code(await airline.send_message("bob", b"x")) == ErrorCode.RATE_LIMITED


async def test_one_sender_recipient_pair_is_rate_limited(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, send_burst_pair=2) as relay:
        alice = await clients.registered(relay.url, "alice")
        await clients.registered(relay.url, "bob")
        carol = await clients.registered(relay.url, "carol")
        assert isinstance(await alice.send_message("bob", b"x"), Sent)
        assert isinstance(await alice.send_message("bob", b"x"), Sent)
        assert error_code(await alice.send_message("bob", b"x")) == ErrorCode.RATE_LIMITED
        assert isinstance(await alice.send_message("carol", b"x"), Sent)
        # The pair's, not the recipient's: alice's empty bucket to bob refuses nobody else
        # writing to bob (else one sender could silence a recipient for everyone).
        assert isinstance(await carol.send_message("bob", b"x"), Sent)


async def test_business_only_intents_are_forbidden_to_users(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    airline = await clients.registered(relay.url, "airline", "business")
    bob = await clients.registered(relay.url, "bob")
    notification = {"intent": "notification", "category": "utility"}
    request = {"intent": "consent_request", "categories": ("utility", "marketing")}
    assert error_code(await alice.send_message("bob", b"x", **notification)) == ErrorCode.FORBIDDEN
    assert error_code(await alice.send_message("bob", b"x", **request)) == ErrorCode.FORBIDDEN
    assert isinstance(await bob.send_message("airline", b"hello"), Sent)  # SPEC §7.3: may ask
    assert isinstance(await airline.send_message("bob", b"r", **request), Sent)
    await stated(bob, "grant", "airline", clock.now, ("utility",))  # SPEC §7.3: consent first
    assert isinstance(await airline.send_message("bob", b"n", **notification), Sent)
    first, second = await bob.deliveries(2)
    assert (first.intent, first.categories) == ("consent_request", ("utility", "marketing"))
    assert (second.sender_kind, second.intent, second.category) == (
        "business",
        "notification",
        "utility",
    )


async def test_a_users_business_intent_is_refused_before_it_takes_a_token(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §6.2, §10: a user's notification or consent_request is 202 from the frame
    alone (delivery.check_send, step 1), before any bucket or the store: refusing it
    must not spend the one token the user's next chat needs. (The store's judgment
    refuses it with 202 too, but only after the account's and the pair's buckets.)"""
    async with relay_with(config, clock, send_burst_user=1, send_burst_pair=1) as relay:
        alice = await clients.registered(relay.url, "alice")
        await clients.registered(relay.url, "bob")
        for labels in (
            {"intent": "notification", "category": "utility"},
            {"intent": "consent_request", "categories": ("utility",)},
        ):
            refused = await alice.send_message("bob", b"x", **labels)
            assert error_code(refused) == ErrorCode.FORBIDDEN
        assert isinstance(await alice.send_message("bob", b"x"), Sent)


# --- every request type has a per-account bucket (SPEC §10) -----------------------

_BAD_SIGNATURE = b"\x00" * 64


def _refused_request(kind: str, clock: FakeClock) -> Callable[[int], Frame]:
    """A request of ``kind`` whose handling would refuse it for another reason than
    the rate limit: a 402 in its place shows the bucket is taken before any work."""
    if kind == "profile_fetch":
        return lambda i: ProfileFetch(id=i, handle="nobody")  # 601 after a lookup
    if kind == "statements_list":
        return lambda i: StatementsList(id=i)  # a writer job
    if kind == "profile_put":
        return lambda i: ProfilePut(id=i, profile=b"\x80")  # 202 after reading the kind
    if kind == "usage_fetch":
        return lambda i: UsageFetch(id=i, month="2027-01")  # 202 after reading the kind
    if kind == "prekeys_upload":
        spk = SignedPreKeyRecord(key_id=1, public=os.urandom(32), signature=_BAD_SIGNATURE)
        return lambda i: PrekeysUpload(id=i, signed_prekey=spk)  # 300 after a verification
    assert kind == "rotate_identity"
    return lambda i: RotateIdentity(
        id=i, new_identity_key=os.urandom(32), issued_at=clock.now,
        old_signature=_BAD_SIGNATURE, new_signature=_BAD_SIGNATURE,
    )  # 500 after two verifications  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "period"),
    [
        ("profile_fetch", "min"),
        ("statements_list", "min"),
        ("profile_put", "min"),
        ("usage_fetch", "min"),
        ("prekeys_upload", "min"),
        ("rotate_identity", "h"),
    ],
)
async def test_every_request_type_is_rate_limited_per_account_before_any_work(
    config: RelayConfig, clock: FakeClock, clients: Clients, kind: str, period: str
) -> None:
    """SPEC §10: a request over its account's bucket gets 402 with retry_after, and
    nothing else is done for it; another account has its own bucket."""
    period_ms = 60_000 if period == "min" else 3_600_000
    changes = {f"{kind}_rate_per_{period}": 2.0, f"{kind}_burst": 2}
    async with relay_with(config, clock, **changes) as relay:
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        request = _refused_request(kind, clock)
        first, second = await alice.request(request), await alice.request(request)
        assert not _rate_limited(first) and type(second) is type(first)
        limited = await alice.request(request)
        assert isinstance(limited, Error) and limited.code == ErrorCode.RATE_LIMITED
        assert limited.retry_after is not None
        assert abs(limited.retry_after - period_ms // 2) <= 1  # two tokens per period
        assert type(await bob.request(request)) is type(first)  # bob's own bucket
        clock.advance(limited.retry_after)
        assert not _rate_limited(await alice.request(request))


async def test_a_statement_takes_a_token_of_its_signers_send_bucket_by_kind(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §10: a STATEMENT takes "the signer's SEND bucket (a statement is forwarded like
    a message)" — the user's or the business's — then its own; here the SEND buckets run
    dry first."""
    async with relay_with(
        config, clock, send_burst_user=2, send_burst_business=4, statement_burst=100
    ) as relay:
        alice = await clients.registered(relay.url, "alice")
        shop = await clients.registered(relay.url, "shop", "business")
        for n in range(2):
            await stated(alice, "block", f"spammer{n}", clock.now)
        assert error_code(await state(alice, "block", "spammer9", clock.now)) == (
            ErrorCode.RATE_LIMITED
        )
        for n in range(4):  # more than a user's burst: the business's bucket
            await stated(shop, "block", f"spammer{n}", clock.now)
        assert error_code(await state(shop, "block", "spammer9", clock.now)) == (
            ErrorCode.RATE_LIMITED
        )


async def test_profile_fetches_are_limited_per_asker_whatever_handles_they_ask_for(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §10, §7.7: the bucket is the asker's; one per handle asked for would let an
    account ask thousands of handles a second which of them are businesses."""
    async with relay_with(config, clock, profile_fetch_burst=2) as relay:
        alice = await clients.registered(relay.url, "alice")
        for n in range(2):
            answer = await alice.request(lambda i, n=n: ProfileFetch(id=i, handle=f"shop{n}"))
            assert not _rate_limited(answer)
        limited = await alice.request(lambda i: ProfileFetch(id=i, handle="shop9"))
        assert _rate_limited(limited)


@pytest.mark.parametrize("kind", ["bill_fetch", "discoverable"])
async def test_bill_fetches_and_discoverable_take_the_buckets_spec_names(
    config: RelayConfig, clock: FakeClock, clients: Clients, kind: str
) -> None:
    """SPEC §10's table: BILL_FETCH takes the connection's LOG_FETCH bucket (a bill is a
    log read), DISCOVERABLE the account's PROFILE_PUT bucket (each one logs an entry)."""

    def request(i: int) -> Frame:
        return BillFetch(id=i, month="2027-01") if kind == "bill_fetch" else Discoverable(id=i)

    if kind == "bill_fetch":
        changes, account = {"log_fetch_burst": 2, "log_fetch_rate_per_min": 1.0}, "business"
    else:
        changes, account = {"profile_put_burst": 2, "profile_put_rate_per_min": 1.0}, "user"
    async with relay_with(config, clock, **changes) as relay:
        client = await clients.registered(relay.url, "acct", account)
        for _ in range(2):
            assert not _rate_limited(await client.request(request))
        limited = await client.request(request)
        assert isinstance(limited, Error) and limited.code == ErrorCode.RATE_LIMITED
        assert limited.retry_after == 60_000


def _rate_limited(frame: Frame) -> bool:
    return isinstance(frame, Error) and frame.code == ErrorCode.RATE_LIMITED


async def test_an_ack_costs_work_only_for_deliveries_in_flight_on_its_connection(
    relay: RunningRelay, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6.5, §10: ACK needs no rate limit because ids this connection does not
    have in flight are ignored without work — a flood of made-up ids reaches no
    writer job."""
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await alice.send_message("bob", b"x"), Sent)
    delivered = await bob.push(Deliver)
    jobs: list[object] = []
    call_many = relay.ctx.store.call_many

    def counted(operation: str, item: object, done: Callable[[bool, object], None]) -> None:
        jobs.append(item)
        call_many(operation, item, done)

    monkeypatch.setattr(relay.ctx.store, "call_many", counted)
    for first in range(10_000, 30_000, 256):
        await bob.send(Ack(delivery_ids=tuple(range(first, first + 256))))
    await bob.send(Ack(delivery_ids=(delivered.delivery_id, 99_999)))
    assert isinstance(await bob.send_message("alice", b"sync"), Sent)  # after all the ACKs
    assert jobs == [["bob", (delivered.delivery_id,)]]
    assert db_rows(relay.config, "SELECT COUNT(*) FROM queue WHERE recipient = 'bob'") == [(0,)]


async def _spend_sends(relay: RunningRelay, clients: Clients, burst: int) -> RawClient:
    """alice, registered on ``relay``, with her SEND bucket spent to the last token."""
    alice = await clients.registered(relay.url, "alice")
    for n in range(burst):
        assert isinstance(await alice.send_message("bob", b"%d" % n), Sent)
    assert error_code(await alice.send_message("bob", b"one too many")) == ErrorCode.RATE_LIMITED
    return alice


async def test_another_relay_process_takes_over_an_accounts_spent_buckets(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §10 (issue 14): per-account limits are one bucket for the whole relay. A
    process that serves an account whose last connection another process served counts
    its buckets as emptied when that connection ended: moving to another worker (here:
    a second relay process on the same store) must not refill them."""
    limits_ = {"send_burst_user": 3, "send_rate_user": 2.0}
    async with relay_with(config, clock, **limits_) as first:
        await clients.registered(first.url, "bob")
        alice = await _spend_sends(first, clients, 3)
        await alice.close()
    clock.advance(500)  # one token refilled since then, and no more
    async with relay_with(config, clock, **limits_) as second:
        alice, _ = await clients.logged_in(second.url, "alice", alice.key)
        assert isinstance(await alice.send_message("bob", b"refilled"), Sent)
        limited = await alice.send_message("bob", b"not refilled")
        assert error_code(limited) == ErrorCode.RATE_LIMITED
        assert isinstance(limited, Error) and limited.retry_after == 500


@pytest.mark.postgresql_only  # relay processes sharing a store
async def test_a_connection_still_open_elsewhere_hands_over_empty_buckets(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §10: while the account's previous connection may still be open on another
    process (not closed yet, or that process died), the new one starts from empty
    buckets, refilling at the rate: the two can never spend two bursts."""
    limits_ = {"send_burst_user": 3, "send_rate_user": 2.0}
    async with relay_with(config, clock, **limits_) as first:
        await clients.registered(first.url, "bob")
        alice = await clients.registered(first.url, "alice")
        await alice.close()
        ended = "SELECT COUNT(*) FROM account_sessions WHERE handle = 'alice' AND live = false"
        await until(lambda: db_rows(first.config, ended) == [(1,)])
        clock.advance(10_000)  # the end of an earlier connection is no measure of a live one
        alice, _ = await clients.logged_in(first.url, "alice", alice.key)
        async with relay_with(config, clock, **limits_) as second:
            again, _ = await clients.logged_in(second.url, "alice", alice.key)
            limited = await again.send_message("bob", b"a second burst")
            assert error_code(limited) == ErrorCode.RATE_LIMITED
            clock.advance(500)
            assert isinstance(await again.send_message("bob", b"refilled"), Sent)


@pytest.mark.postgresql_only  # relay processes sharing a store
async def test_a_pair_bucket_spent_on_one_process_is_not_full_on_another(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §10, threat model T63: the per-pair SEND bucket follows its sender to another
    relay process, as the account's buckets do. It was kept per process, "the sender's
    account bucket bounds it across processes" — but a business's account bucket is 50
    times the pair rate, so a business got a full pair burst towards one customer on
    every worker it logged in to, and N workers' pair rates in all. Here shop spends its
    pair bucket towards bob (who wrote to it: service replies) on the first worker and
    logs in to the second 500 ms later: one token has refilled, and before, the reply
    past it was SENT too (the second worker's own pair bucket was full)."""
    limits_ = {"send_burst_pair": 3, "send_rate_pair": 2.0}
    async with (
        relay_with(config, clock, **limits_) as first,
        relay_with(config, clock, **limits_) as second,
    ):
        bob = await clients.registered(first.url, "bob")
        shop = await clients.registered(first.url, "shop", "business")
        assert isinstance(await bob.send_message("shop", b"where is my parcel?"), Sent)
        for n in range(3):
            assert isinstance(await shop.send_message("bob", b"reply %d" % n), Sent)
        assert error_code(await shop.send_message("bob", b"4")) == ErrorCode.RATE_LIMITED
        await shop.close()
        ended = "SELECT COUNT(*) FROM account_sessions WHERE handle = 'shop' AND live = false"
        await until(lambda: db_rows(first.config, ended) == [(1,)])
        clock.advance(500)  # one token refilled since then, and no more
        shop, _ = await clients.logged_in(second.url, "shop", shop.key)
        assert isinstance(await shop.send_message("bob", b"refilled"), Sent)
        limited = await shop.send_message("bob", b"not refilled")
        assert error_code(limited) == ErrorCode.RATE_LIMITED
        assert isinstance(limited, Error) and limited.retry_after == 500


async def test_the_same_process_keeps_an_accounts_buckets_across_its_connections(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §10: reconnecting to the same process changes nothing (its buckets are exact),
    and a fresh account starts full."""
    async with relay_with(config, clock, send_burst_user=3, send_rate_user=2.0) as relay:
        await clients.registered(relay.url, "bob")
        carol = await clients.registered(relay.url, "carol")
        assert isinstance(await carol.send_message("bob", b"one of three"), Sent)
        await carol.close()
        carol, _ = await clients.logged_in(relay.url, "carol", carol.key)
        for n in range(2):  # the two tokens left: a reconnection empties no bucket
            assert isinstance(await carol.send_message("bob", b"%d" % n), Sent)
        alice = await _spend_sends(relay, clients, 3)
        await alice.close()
        again, _ = await clients.logged_in(relay.url, "alice", alice.key)
        assert error_code(await again.send_message("bob", b"still spent")) == ErrorCode.RATE_LIMITED
        clock.advance(500)
        assert isinstance(await again.send_message("bob", b"refilled"), Sent)
