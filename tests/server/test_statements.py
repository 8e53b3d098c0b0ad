"""STATEMENT and STATEMENTS_LIST over real sockets (SPEC §7.4–7.6)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import limits
from blindrelay.protocol.codec import decode, encode, encode_object
from blindrelay.protocol.errors import ErrorCode, StaleStatement
from blindrelay.protocol.frames import (
    Ack,
    Deliver,
    Ok,
    Sent,
    Statement,
    Statements,
    StatementsList,
)
from blindrelay.protocol.signed import (
    ConsentStatement,
    SignedObject,
    make_statement,
    peek_signed,
    unverified_body,
    verify_statement,
)
from blindrelay.protocol.transparency import entries
from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store import Account
from blindrelay.server.store.sqlite import jobs
from blindrelay.server.store.sqlite.commit import GroupCommitter
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

from .conftest import ALL_BACKENDS, Clients, FakeClock, RawClient, db_rows, error_code, relay_with
from .consent_helpers import state, stated, statement_bytes

BACKENDS = ALL_BACKENDS

UTILITY = ("utility",)


async def _pair(relay: RunningRelay, clients: Clients) -> tuple[RawClient, RawClient]:
    bob = await clients.registered(relay.url, "bob")
    airline = await clients.registered(relay.url, "airline", "business")
    return bob, airline


async def _code(client: RawClient, data: bytes) -> int:
    return error_code(await client.request(lambda i: Statement(id=i, statement=data)))


async def test_forged_altered_and_misaddressed_statements_are_invalid(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    bob, _ = await _pair(relay, clients)
    now = clock.now
    forged_key = SigningKey.generate()
    genuine = statement_bytes(bob, "grant", "airline", now, UTILITY)
    forged = statement_bytes(bob, "grant", "airline", now, UTILITY)
    outer = peek_signed(ConsentStatement, forged)
    forged = encode_object(SignedObject(body=outer.body, sig=forged_key.sign(b"x").signature))
    assert await _code(bob, forged) == ErrorCode.INVALID_STATEMENT
    outer = peek_signed(ConsentStatement, genuine)
    altered_body = outer.body.replace(b"utility", b"marketi")
    assert altered_body != outer.body
    altered = encode_object(SignedObject(body=altered_body, sig=outer.sig))
    assert await _code(bob, altered) == ErrorCode.INVALID_STATEMENT
    wrong_relay = statement_bytes(bob, "grant", "airline", now, UTILITY, relay_key=os.urandom(32))
    assert await _code(bob, wrong_relay) == ErrorCode.INVALID_STATEMENT
    # Signed by bob but claiming another signer, or another signer key.
    other_signer = statement_bytes(bob, "block", "airline", now, signer="carol")
    assert await _code(bob, other_signer) == ErrorCode.INVALID_STATEMENT
    other_key = statement_bytes(
        bob, "grant", "airline", now, UTILITY, signer_key=bytes(forged_key.verify_key)
    )
    assert await _code(bob, other_key) == ErrorCode.INVALID_STATEMENT
    assert await _code(bob, b"\x82\xa4body\xc4\x00\xa3sig\xc4\x00") == ErrorCode.INVALID_STATEMENT
    # None of them changed anything: the genuine one is still a first grant.
    assert await _code_or_ok(bob, genuine) == "ok"
    assert db_rows(relay.config, "SELECT COUNT(*) FROM statements") == [(1,)]


async def _code_or_ok(client: RawClient, data: bytes) -> int | str:
    answer = await client.request(lambda i: Statement(id=i, statement=data))
    return "ok" if isinstance(answer, Ok) else error_code(answer)


async def test_replayed_and_stale_statements_are_stale(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    bob, _ = await _pair(relay, clients)
    grant = statement_bytes(bob, "grant", "airline", clock.now, UTILITY)
    assert await _code_or_ok(bob, grant) == "ok"
    assert await _code(bob, grant) == ErrorCode.STALE_STATEMENT  # same nonce
    skew = limits.STATEMENT_SKEW_MS
    late = statement_bytes(bob, "grant", "airline", clock.now - skew - 1, ("marketing",))
    early = statement_bytes(bob, "grant", "airline", clock.now + skew + 1, ("marketing",))
    assert await _code(bob, late) == ErrorCode.STALE_STATEMENT
    assert await _code(bob, early) == ErrorCode.STALE_STATEMENT
    edge = statement_bytes(bob, "grant", "airline", clock.now - skew, ("marketing",))
    assert await _code_or_ok(bob, edge) == "ok"


async def test_a_nonce_is_kept_while_its_statement_could_still_be_fresh(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.4: 501 for a statement whose (signer, nonce) the relay has seen. One accepted
    at t may be issued as late as t + STATEMENT_SKEW_MS, so it is fresh until t + 2 × skew:
    a purge before then must not forget its nonce, or the replay would be accepted."""
    bob, _ = await _pair(relay, clients)
    skew = limits.STATEMENT_SKEW_MS
    grant = statement_bytes(bob, "grant", "airline", clock.now + skew, UTILITY)
    assert await _code_or_ok(bob, grant) == "ok"
    await stated(bob, "revoke", "airline", clock.now, UTILITY)  # the replay would be in force
    clock.advance(2 * skew)
    await relay.housekeeping.purge_expired()
    assert await _code(bob, grant) == ErrorCode.STALE_STATEMENT


async def test_kinds_unknown_targets_and_table_refusals(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    bob, airline = await _pair(relay, clients)
    await clients.registered(relay.url, "carol")
    now = clock.now
    invalid, unavailable = ErrorCode.INVALID_STATEMENT, ErrorCode.RECIPIENT_UNAVAILABLE
    # To a user as to nobody (SPEC §7.7); by a business it is the signer's own kind.
    assert error_code(await state(bob, "grant", "carol", now, UTILITY)) == unavailable
    assert error_code(await state(airline, "grant", "bob", now, UTILITY)) == invalid
    assert error_code(await state(bob, "grant", "nobody", now, UTILITY)) == unavailable
    # Revoking what was never granted; denying what is granted (that is a revoke).
    assert error_code(await state(bob, "revoke", "airline", now, UTILITY)) == invalid
    await stated(bob, "grant", "airline", now, UTILITY)
    assert error_code(await state(bob, "deny", "airline", now, UTILITY)) == invalid
    # A two-category statement with one refused transition is refused whole.
    both = ("utility", "marketing")
    assert error_code(await state(bob, "revoke", "airline", now, both)) == invalid
    assert error_code(await state(bob, "unblock", "carol", now)) == invalid
    await stated(bob, "block", "carol", now)
    assert error_code(await state(bob, "block", "carol", now)) == invalid
    assert db_rows(relay.config, "SELECT action, target FROM statements ORDER BY seq") == [
        ("grant", "airline"),
        ("block", "carol"),
    ]


async def test_receipts_are_forwarded_to_the_business_and_verify_offline(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    bob, airline = await _pair(relay, clients)
    carol = await clients.registered(relay.url, "carol")
    statements = [
        statement_bytes(bob, "grant", "airline", clock.now, ("utility", "marketing")),
        statement_bytes(bob, "revoke", "airline", clock.now, ("marketing",)),
        statement_bytes(bob, "block", "airline", clock.now),
        statement_bytes(bob, "unblock", "airline", clock.now),
    ]
    for data in statements:
        assert await _code_or_ok(bob, data) == "ok"
    await stated(airline, "block", "carol", clock.now)  # a user is never told who blocks them
    await stated(bob, "block", "carol", clock.now)
    delivered = await airline.deliveries(4)
    assert [d.body for d in delivered] == statements  # byte for byte, in order
    for deliver, data in zip(delivered, statements, strict=True):
        assert (deliver.sender, deliver.sender_kind, deliver.intent) == ("bob", "user", "statement")
        receipt = verify_statement(
            deliver.body, expected_key=bytes(bob.key.verify_key), relay_key=airline.relay_key
        )
        assert deliver.msg_id == receipt.nonce
        with pytest.raises(Exception):  # noqa: B017 - any refusal: wrong pinned key
            verify_statement(data, expected_key=bytes(carol.key.verify_key),
                             relay_key=airline.relay_key)  # fmt: skip
    # Durable like envelopes: nothing for carol, the receipts wait in airline's queue until
    # ACK — those still in force: the unblock replaced the block (SPEC §7.5).
    assert db_rows(relay.config, "SELECT COUNT(*) FROM queue WHERE recipient = 'carol'") == [(0,)]
    await airline.close()
    airline2, welcome = await clients.logged_in(relay.url, "airline", airline.key)
    assert welcome.queued == 3
    in_force = [statements[0], statements[1], statements[3]]
    assert [d.body for d in await airline2.deliveries(3)] == in_force


async def test_user_to_user_chat_needs_no_consent_but_obeys_blocks(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await alice.send_message("bob", b"hi"), Sent)
    await stated(bob, "block", "alice", clock.now)
    unavailable = ErrorCode.RECIPIENT_UNAVAILABLE
    assert error_code(await alice.send_message("bob", b"again")) == unavailable
    assert error_code(await bob.send_message("alice", b"sorry")) == unavailable  # either way
    await stated(alice, "block", "bob", clock.now)
    await stated(bob, "unblock", "alice", clock.now)
    # Alice's own block stands: one account's unblock never lifts the other's.
    assert error_code(await alice.send_message("bob", b"x")) == unavailable
    await stated(alice, "unblock", "bob", clock.now)
    assert isinstance(await alice.send_message("bob", b"back"), Sent)
    assert isinstance(await bob.send_message("alice", b"ok"), Sent)
    bodies = [d.body for d in await bob.deliveries(2)]
    assert bodies == [b"hi", b"back"]


async def test_listing_returns_statements_in_force_page_by_page(
    relay: RunningRelay, clients: Clients, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_LISTED_STATEMENTS", 2)
    bob = await clients.registered(relay.url, "bob")
    shops = [await clients.registered(relay.url, f"shop{n}", "business") for n in range(3)]
    await clients.registered(relay.url, "carol")
    now = clock.now
    grant_both = statement_bytes(bob, "grant", "shop0", now, ("utility", "marketing"))
    assert await _code_or_ok(bob, grant_both) == "ok"
    revoke = statement_bytes(bob, "revoke", "shop0", now, ("marketing",))
    assert await _code_or_ok(bob, revoke) == "ok"
    grant1 = statement_bytes(bob, "grant", "shop1", now, UTILITY)
    assert await _code_or_ok(bob, grant1) == "ok"
    block = statement_bytes(bob, "block", "carol", now)
    assert await _code_or_ok(bob, block) == "ok"
    unblock = statement_bytes(bob, "unblock", "carol", now)
    assert await _code_or_ok(bob, unblock) == "ok"
    shop_block = statement_bytes(shops[2], "block", "bob", now)
    assert await _code_or_ok(shops[2], shop_block) == "ok"

    async def listing(client: RawClient) -> list[bytes]:
        items: list[bytes] = []
        after = 0
        while True:
            request_id = client.request_id()
            await client.send(StatementsList(id=request_id, after=after))
            page = await client.response(request_id)
            assert isinstance(page, Statements)
            assert len(page.statements) <= 2
            items.extend(page.statements)
            if page.next is None:
                return items
            after = page.next

    # grant_both is still in force for utility; the block was superseded by the unblock;
    # shop2's block of bob is not listed to bob (SPEC §7.5: a user is not told).
    assert await listing(bob) == [grant_both, revoke, grant1, unblock]
    shop0 = shops[0]
    assert await listing(shop0) == [grant_both, revoke]
    assert await listing(shops[2]) == [shop_block]
    keys = {"bob": bytes(bob.key.verify_key), "shop2": bytes(shops[2].key.verify_key)}
    for item in await listing(bob) + await listing(shops[2]):
        signer = unverified_body(ConsentStatement, item).signer
        verify_statement(item, expected_key=keys[signer], relay_key=bob.relay_key)


async def test_forwarded_receipts_are_delivered_to_an_online_business_at_once(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    bob, airline = await _pair(relay, clients)
    await stated(bob, "grant", "airline", clock.now, UTILITY)
    deliver = await airline.push(Deliver)
    assert deliver.intent == "statement" and deliver.sender == "bob"


async def _raw_statement_answer(client: RawClient, data: bytes, request_id: int) -> bytes:
    await client.ws.send(encode(Statement(id=request_id, statement=data)))
    return await client._recv_bytes()


async def test_a_consent_statement_to_a_user_is_refused_like_one_to_nobody(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.4, §7.7: a grant, deny or revoke whose target is not a business gets the one
    ERROR 400, byte for byte the same whether the target is a user or does not exist."""
    bob = await clients.registered(relay.url, "bob")
    await clients.registered(relay.url, "carol")
    for action in ("grant", "deny", "revoke"):
        answers = {
            target: await _raw_statement_answer(
                bob, statement_bytes(bob, action, target, clock.now, UTILITY), 55
            )
            for target in ("carol", "nobody")
        }
        assert answers["carol"] == answers["nobody"], (action, answers)
        assert error_code(decode(answers["carol"])) == ErrorCode.RECIPIENT_UNAVAILABLE
    assert db_rows(relay.config, "SELECT COUNT(*) FROM statements") == [(0,)]


async def test_a_block_of_an_unknown_handle_is_accepted_and_binds_whoever_registers_it(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.4: blocking answers OK whether the target exists or not, so a block
    reveals nothing; the block is stored and holds once the handle is registered."""
    bob = await clients.registered(relay.url, "bob")
    await clients.registered(relay.url, "carol")
    answers = {
        target: await _raw_statement_answer(
            bob, statement_bytes(bob, "block", target, clock.now), 56
        )
        for target in ("carol", "later")
    }
    assert answers["carol"] == answers["later"]
    assert isinstance(decode(answers["later"]), Ok)
    later = await clients.registered(relay.url, "later")
    unavailable = ErrorCode.RECIPIENT_UNAVAILABLE
    assert error_code(await later.send_message("bob", b"hi")) == unavailable
    assert error_code(await state(bob, "block", "later", clock.now)) == ErrorCode.INVALID_STATEMENT
    await stated(bob, "unblock", "later", clock.now)
    assert isinstance(await later.send_message("bob", b"hi"), Sent)


async def test_a_blocked_user_is_never_listed_the_block_against_them(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.5–7.6: "a private person learns nothing about who blocked them": a block or
    unblock is listed to its target only when the target is a business."""
    bob = await clients.registered(relay.url, "bob")
    carol = await clients.registered(relay.url, "carol")
    airline = await clients.registered(relay.url, "airline", "business")
    by_carol = statement_bytes(carol, "block", "bob", clock.now)
    by_airline = statement_bytes(airline, "block", "bob", clock.now)
    by_bob = statement_bytes(bob, "block", "airline", clock.now)
    for client, data in ((carol, by_carol), (airline, by_airline), (bob, by_bob)):
        assert await _code_or_ok(client, data) == "ok"

    async def listing(client: RawClient) -> list[bytes]:
        page = await client.request(lambda i: StatementsList(id=i, after=0))
        assert isinstance(page, Statements)
        return list(page.statements)

    assert await listing(bob) == [by_bob]
    assert await listing(carol) == [by_carol]
    # About a business, so listed to it; not forwarded, though: the airline blocks bob.
    assert await listing(airline) == [by_airline, by_bob]


async def test_a_statement_that_changes_nothing_is_refused(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.4: every entry of the transition table changes the category; re-granting a
    granted category, denying one still cooling down, or a statement only partly
    effective, is refused whole with 500 and stores nothing."""
    bob, _ = await _pair(relay, clients)
    invalid = ErrorCode.INVALID_STATEMENT
    await stated(bob, "grant", "airline", clock.now, UTILITY)
    assert error_code(await state(bob, "grant", "airline", clock.now, UTILITY)) == invalid
    both = ("utility", "marketing")
    assert error_code(await state(bob, "grant", "airline", clock.now, both)) == invalid
    await stated(bob, "deny", "airline", clock.now, ("marketing",))
    assert error_code(await state(bob, "deny", "airline", clock.now, ("marketing",))) == invalid
    clock.advance(relay.config.consent_cooldown_ms)  # the cooldown is over: counts as none
    await stated(bob, "deny", "airline", clock.now, ("marketing",))
    assert db_rows(relay.config, "SELECT action FROM statements ORDER BY seq") == [
        ("grant",), ("deny",),
    ]  # fmt: skip


async def test_grant_revoke_churn_neither_locks_the_customer_out_nor_piles_up(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """Issue 13 item 5: forwarded statements do not count towards the queue cap, a newer one
    of the same (signer, target, family) replaces the undelivered older one, superseded
    statements are pruned from storage, and a replay is still refused with 501."""
    async with relay_with(
        config, clock, queue_cap=20, send_burst_user=1000, statement_burst=1000
    ) as relay:
        bob, airline = await _pair(relay, clients)
        await stated(bob, "grant", "airline", clock.now, ("marketing",))
        await airline.close()
        first = statement_bytes(bob, "grant", "airline", clock.now, UTILITY)
        assert await _code_or_ok(bob, first) == "ok"
        latest = first
        for n in range(60):
            latest = statement_bytes(
                bob, "revoke" if n % 2 == 0 else "grant", "airline", clock.now, UTILITY
            )
            assert await _code_or_ok(bob, latest) == "ok"
        assert isinstance(await bob.send_message("airline", b"still here"), Sent)
        path = relay.config
        queued = "SELECT intent, COUNT(*) FROM queue WHERE recipient = 'airline' GROUP BY intent"
        assert sorted(db_rows(path, queued)) == [("chat", 1), ("statement", 2)]
        assert db_rows(path, "SELECT COUNT(*) FROM statements") == [(2,)]
        assert await _code(bob, first) == ErrorCode.STALE_STATEMENT  # pruned, still no replay
        airline2, welcome = await clients.logged_in(relay.url, "airline", airline.key)
        assert welcome.queued == 3
        delivered = await airline2.deliveries(3)
        assert [d.intent for d in delivered] == ["statement", "statement", "chat"]
        assert delivered[1].body == latest


async def _logged_statements(relay: RunningRelay) -> int:
    """Statement entries in the relay's transparency log (SPEC §15.1)."""
    data = await relay.ctx.store.submit("log_entries", 0, 10_000)
    return sum(isinstance(entries.decode_entry(d), entries.StatementLogged) for d in data)


async def test_block_unblock_churn_is_bounded_by_the_statement_bucket(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §10: every accepted statement is logged for ever (§15), and alternating block
    and unblock of one target changes something each time, so the SEND bucket alone let
    one account log 50 entries a second (~890 MB a day). With the default limits, the
    statement past ``STATEMENT_BURST`` is refused with 402 and retry_after and logs
    nothing; once a token has refilled, the next is accepted."""
    bob = await clients.registered(relay.url, "bob")
    await clients.registered(relay.url, "carol")
    before = await _logged_statements(relay)
    burst = limits.STATEMENT_BURST
    assert burst < limits.SEND_BURST_USER  # the send bucket alone would accept them all
    for n in range(burst):
        await stated(bob, "block" if n % 2 == 0 else "unblock", "carol", clock.now)
    assert await _logged_statements(relay) == before + burst
    action = "block" if burst % 2 == 0 else "unblock"
    limited = await state(bob, action, "carol", clock.now)
    assert error_code(limited) == ErrorCode.RATE_LIMITED
    assert limited.retry_after is not None  # type: ignore[attr-defined]
    refill_ms = 3_600_000 / limits.STATEMENT_RATE_PER_H
    assert abs(limited.retry_after - refill_ms) <= 1  # type: ignore[attr-defined]
    assert await _logged_statements(relay) == before + burst  # nothing logged
    clock.advance(limited.retry_after)  # type: ignore[attr-defined]
    await stated(bob, action, "carol", clock.now)
    assert await _logged_statements(relay) == before + burst + 1


async def test_a_superseded_statement_is_withdrawn_from_an_online_outbox(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §7.5: the undelivered receipt a newer one replaces is never pushed."""
    async with relay_with(config, clock, delivery_window=1) as relay:
        bob, airline = await _pair(relay, clients)
        await stated(bob, "grant", "airline", clock.now, ("marketing",))
        in_flight = await airline.push(Deliver)  # not acknowledged: the window is full
        grant = statement_bytes(bob, "grant", "airline", clock.now, UTILITY)
        revoke = statement_bytes(bob, "revoke", "airline", clock.now, UTILITY)
        regrant = statement_bytes(bob, "grant", "airline", clock.now, UTILITY)
        for data in (grant, revoke, regrant):
            assert await _code_or_ok(bob, data) == "ok"
        await airline.send(Ack(delivery_ids=(in_flight.delivery_id,)))
        nxt = await airline.push(Deliver)
        assert nxt.body == regrant
        await airline.send(Ack(delivery_ids=(nxt.delivery_id,)))
        request_id = airline.request_id()
        await airline.send(StatementsList(id=request_id, after=0))
        await airline.response(request_id)
        assert not [f for f in airline.inbox if isinstance(f, Deliver)]


def test_eleven_thousand_grants_and_revokes_leave_the_relay_bounded(tmp_path: Path) -> None:
    """Issue 13 item 5, at the writer (where the rules live): 11,000 grant/revoke
    statements from one customer to an offline business. Before the fix they stayed in
    its queue, counted towards QUEUE_CAP_PER_RECIPIENT (the customer got QUEUE_FULL) and
    in ``statements`` for ever."""
    committer = GroupCommitter(Tables(connect(tmp_path / "relay.db", "NORMAL")))
    bob_key = SigningKey.generate()
    bob = Account("bob", "user", bytes(bob_key.verify_key))
    airline = Account("airline", "business", os.urandom(32))
    committer.commit([lambda s: s.accounts.create(bob, 0), lambda s: s.accounts.create(airline, 0)])
    relay_key, start, step = os.urandom(32), 1_800_000_000_000, 100
    cooldown = limits.CONSENT_COOLDOWN_MS

    def signed(n: int) -> bytes:
        statement = make_statement(
            "grant" if n % 2 == 0 else "revoke", signer="bob", signer_key=bob.identity_key,
            target="airline", relay_key=relay_key, now_ms=start + n * step, rng=os.urandom,
            categories=UTILITY,
        )  # fmt: skip
        return statement.sign(lambda m: bob_key.sign(m).signature)

    total = 11_000
    batch: list[Callable[[Tables], object]] = []
    data = b""
    for n in range(total):
        data = signed(n)
        batch.append(lambda s, d=data, n=n: jobs.apply_statement(s, "bob", d, start + n * step,
                                                                 cooldown))  # fmt: skip
        if len(batch) == 1000 or n == total - 1:
            assert all(ok for ok, _ in committer.commit(batch))
            batch = []
    now = start + total * step
    [(ok, value)] = committer.commit([lambda s: jobs.send(
        s, "bob", "user", "airline", os.urandom(16), "chat", None, None, b"hi", now,
        send_rules(RelayConfig()),
    )])  # fmt: skip
    assert ok, value  # not QUEUE_FULL
    [(_, rows)] = committer.commit([lambda s: [
        s.db.execute(sql).fetchone()[0] for sql in (
            "SELECT COUNT(*) FROM queue WHERE intent = 'statement'",
            "SELECT COUNT(*) FROM statements",
        )
    ]])  # fmt: skip
    assert rows == [1, 1]
    # Replay protection outlives the pruned rows: a statement still fresh is refused…
    replay = committer.commit([lambda s: jobs.apply_statement(s, "bob", data, now, cooldown)])
    assert isinstance(replay[0][1], StaleStatement)
    # …and the nonces themselves are kept only while a statement could still be fresh.
    committer.commit([lambda s: jobs.purge(s, 0, now)])
    [(_, nonces)] = committer.commit(
        [lambda s: s.db.execute("SELECT COUNT(*) FROM statement_nonces").fetchone()[0]]
    )
    assert nonces <= 2 * limits.STATEMENT_SKEW_MS // step + 1


async def test_blocks_are_kept_for_at_most_max_block_targets_accounts(
    relay: RunningRelay, clients: Clients, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §7.4: a block of a handle nobody holds is kept, so blocks must be bounded per
    signer, or one account could fill the relay's storage by blocking random handles. The
    bound counts existing and unknown targets alike: it tells nothing about existence."""
    monkeypatch.setattr(limits, "MAX_BLOCK_TARGETS", 3)
    bob = await clients.registered(relay.url, "bob")
    await clients.registered(relay.url, "carol")
    await clients.registered(relay.url, "dave")
    for target in ("carol", "ghost1", "ghost2"):
        await stated(bob, "block", target, clock.now)
    invalid = ErrorCode.INVALID_STATEMENT
    assert error_code(await state(bob, "block", "dave", clock.now)) == invalid
    assert error_code(await state(bob, "block", "ghost3", clock.now)) == invalid
    await stated(bob, "unblock", "ghost1", clock.now)  # kept on record: still three
    assert error_code(await state(bob, "block", "dave", clock.now)) == invalid
    await stated(bob, "block", "ghost1", clock.now)  # not a new target
    rows = "SELECT COUNT(*) FROM statements_in_force WHERE signer = 'bob'"
    assert db_rows(relay.config, rows) == [(3,)]


async def test_a_block_made_before_its_target_registered_is_never_listed_to_it(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.6, threat model T47: a block of a handle nobody holds is kept (§7.4) but
    forwarded to no one; whoever registers the handle later must not find it in their
    STATEMENTS_LIST, or registering a handle people pre-block tells who blocked it (found
    in review: the new business was listed bob's block, handle and key)."""
    bob = await clients.registered(relay.url, "bob")
    early = statement_bytes(bob, "block", "newshop", clock.now)
    assert await _code_or_ok(bob, early) == "ok"
    shop = await clients.registered(relay.url, "newshop", "business")
    carol = await clients.registered(relay.url, "carol")
    late = statement_bytes(carol, "block", "newshop", clock.now)
    assert await _code_or_ok(carol, late) == "ok"  # forwarded: the shop holds it anyway
    assert (await shop.push(Deliver)).sender == "carol"
    listed = await shop.request(lambda i: StatementsList(id=i, after=0))
    assert isinstance(listed, Statements)
    assert list(listed.statements) == [late]
    mine = await bob.request(lambda i: StatementsList(id=i, after=0))
    assert isinstance(mine, Statements) and list(mine.statements) == [early]  # the signer's own


async def test_an_unblock_of_a_block_made_before_its_target_registered_is_not_forwarded(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §7.5, threat model T47: an unblock is accepted only while a block is in force,
    so forwarding or listing bob's unblock of ``newshop`` told the business, registered
    after bob had blocked the handle, that he had (reproduced: the shop was pushed bob's
    unblock, and listed it). An unblock goes to its target only if the block it lifts
    did; what bob says once the business exists, a block and its unblock, goes as before."""
    bob = await clients.registered(relay.url, "bob")
    await stated(bob, "block", "newshop", clock.now)
    shop = await clients.registered(relay.url, "newshop", "business")
    lifted = statement_bytes(bob, "unblock", "newshop", clock.now)
    assert await _code_or_ok(bob, lifted) == "ok"
    carol = await clients.registered(relay.url, "carol")
    marker = statement_bytes(carol, "block", "newshop", clock.now)
    assert await _code_or_ok(carol, marker) == "ok"
    # Queued after bob's unblock, so pushed after it had that been forwarded.
    assert (await shop.push(Deliver)).body == marker
    from_bob = "SELECT COUNT(*) FROM queue WHERE recipient = 'newshop' AND sender = 'bob'"
    assert db_rows(relay.config, from_bob) == [(0,)]
    listed = await shop.request(lambda i: StatementsList(id=i, after=0))
    assert isinstance(listed, Statements) and list(listed.statements) == [marker]
    mine = await bob.request(lambda i: StatementsList(id=i, after=0))
    assert isinstance(mine, Statements) and list(mine.statements) == [lifted]
    # Blocked again now that the business exists: forwarded and listed, and so is its unblock.
    for action in ("block", "unblock"):
        said = statement_bytes(bob, action, "newshop", clock.now)
        assert await _code_or_ok(bob, said) == "ok"
        assert (await shop.push(Deliver)).body == said
        listed = await shop.request(lambda i: StatementsList(id=i, after=0))
        assert isinstance(listed, Statements) and list(listed.statements) == [marker, said]
