"""Delivery leases (SPEC §6.4.6, server/store/leases.py): a contact's chat pushed before the
SQLite writer has decided it — and every case where it must not be.

"Before the writer has decided it" is a state the test holds, not a race: the writer
process waits, once it has received a job and before it runs its batch, while the file
``HOLD_BEFORE_BATCH_ENV`` names exists. A DELIVER that arrives then was pushed by the
relay process alone. That something was *not* pushed first is shown by a round trip on
the recipient's connection after the sender's answer: a DELIVER pushed first would have
been written to the recipient's socket before the SEND was even handed to the writer.
The randomized comparison with the strict path: tests/server/test_lease_differential.py.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest

from blindrelay.protocol.consent import ALLOW, REFUSE, Decision, Meter, Request, Verdict
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import (
    Ack,
    Deliver,
    Error,
    Ok,
    Send,
    Sent,
    Statement,
    StatementsList,
)
from blindrelay.server import housekeeping
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store.leases import (
    LEASE_MAX,
    LEASE_MS,
    NEUTRAL,
    PUSHED,
    TOP_UP_AT,
    UNLEASED,
    LeaseTable,
    grant_size,
    leasable,
)
from blindrelay.server.store.operations import CONTRACT, SendRules
from blindrelay.server.store.records import Account
from blindrelay.server.store.sqlite import relayleases
from blindrelay.server.store.sqlite import writer as writer_module
from blindrelay.server.store.sqlite.database import connect, count_queued
from blindrelay.server.store.sqlite.leasing import LeaseBroken, WriterLeases
from blindrelay.server.store.sqlite.tables import Tables
from blindrelay.server.store.sqlite.writer_process import HOLD_BEFORE_BATCH_ENV

from .conftest import (
    Clients,
    FakeClock,
    RawClient,
    RelayFixture,
    db_rows,
    error_code,
    outbox_of,
    released,
    settled,
    until,
)
from .consent_helpers import stated, statement_bytes

# --- the rules, alone ----------------------------------------------------------------


def test_only_a_contacts_plain_chat_between_users_earns_a_lease() -> None:
    """``leasable``: the decision ALLOW itself (no pair change, no meter, no budget)."""
    user, business = "user", "business"
    assert leasable(user, user, Request.CHAT, ALLOW, stranger=False)
    assert not leasable(user, user, Request.CHAT, ALLOW, stranger=True)
    assert not leasable(user, business, Request.CHAT, ALLOW, stranger=False)
    assert not leasable(business, user, Request.CHAT, ALLOW, stranger=False)
    assert not leasable(user, None, Request.CHAT, ALLOW, stranger=False)
    assert not leasable(user, user, Request.NOTIFICATION, ALLOW, stranger=False)
    assert not leasable(user, user, Request.CHAT, REFUSE, stranger=False)
    # Allowed, but changing the pair (a first chat back) or counted: not the constant.
    assert not leasable(user, user, Request.CHAT, Decision(Verdict.ALLOW, writer="a"), False)
    metered = Decision(Verdict.ALLOW, meter=Meter.SERVICE_REPLY)
    assert not leasable(user, user, Request.CHAT, metered, stranger=False)


def test_a_lease_covers_the_room_left_under_the_cap_and_the_share() -> None:
    rules = SendRules(
        queue_cap=100, service_window_ms=1, queue_share_per_sender=30, queue_share_strangers=10,
        message_request_max=1, first_contacts_per_h=1.0, first_contacts_burst=1,
    )  # fmt: skip
    assert grant_size(rules, queued=1, reserved=0) == 29  # the share is the tighter
    assert grant_size(rules, queued=20, reserved=9) == 1
    assert grant_size(rules, queued=20, reserved=10) == 0
    roomy = rules._replace(queue_cap=1000, queue_share_per_sender=1000)
    assert grant_size(roomy, queued=1, reserved=0) == LEASE_MAX


def test_the_lease_table_spends_expires_and_sets_room_aside() -> None:
    table = LeaseTable()
    table.grant("alice", "bob", until=1_000, count=2)
    table.grant("carol", "bob", until=500, count=5)
    assert table.reserved("bob", now=0) == 7
    assert table.reserved("bob", now=500) == 2  # carol's expired: dropped on the way
    assert list(table.by_recipient["bob"]) == ["alice"]
    assert table.held("alice", "bob", now=999) == 2
    assert table.spend("alice", "bob", now=10)
    assert table.spend("alice", "bob", now=10)  # the last one
    assert not table.spend("alice", "bob", now=10)
    assert not table.spend("carol", "bob", now=500)  # gone already
    assert table.by_recipient == {}
    table.grant("alice", "bob", until=1_000, count=2)
    table.new_epoch(7)
    assert (table.epoch, table.reserved("bob", now=0)) == (7, 0)


def test_what_ends_every_lease_is_every_operation_that_may_change_a_pair() -> None:
    """``NEUTRAL`` names operations of the contract only; of today's, only a statement
    (which writes pair states: blocks, consent) is left out, so only it ends leases."""
    assert NEUTRAL.issubset(CONTRACT)
    assert set(CONTRACT) - NEUTRAL == {"apply_statement"}


def test_a_busy_pair_gets_a_fresh_lease_before_its_own_runs_out() -> None:
    """``WriterLeases.grant``: a pair holding more than TOP_UP_AT chats gets none; one
    holding fewer gets a fresh lease replacing its own, never smaller than what it held
    (the relay process may spend that much before it hears of the fresh one)."""
    rules = SendRules(
        queue_cap=1000, service_window_ms=1, queue_share_per_sender=1000,
        queue_share_strangers=10, message_request_max=1, first_contacts_per_h=1.0,
        first_contacts_burst=1,
    )  # fmt: skip
    leases = WriterLeases()
    ticket = leases.open([1, UNLEASED, 0, 100], "alice", "bob")
    assert ticket is not None
    assert leases.grant(ticket, "alice", "bob", rules, queued=1, reserved=0) == [
        0, 100 + LEASE_MS, LEASE_MAX,
    ]  # fmt: skip
    assert leases.grant(ticket, "alice", "bob", rules, queued=2, reserved=LEASE_MAX) is None
    for n in range(LEASE_MAX - TOP_UP_AT):
        spent = leases.open([2 + n, PUSHED, 0, 200], "alice", "bob")
        assert spent is not None and spent.spent
    held = leases.table.held("alice", "bob", 200)
    assert held == TOP_UP_AT
    fresh = leases.grant(ticket, "alice", "bob", rules, queued=40, reserved=held)
    assert fresh is not None and fresh[2] == LEASE_MAX
    assert leases.table.held("alice", "bob", 200) == LEASE_MAX  # replaced, not added
    # Room for fewer chats than the pair holds: no fresh lease.
    tight = rules._replace(queue_cap=100, queue_share_per_sender=100)
    for n in range(LEASE_MAX - TOP_UP_AT):
        assert leases.open([100 + n, PUSHED, 0, 300], "alice", "bob") is not None
    assert leases.grant(ticket, "alice", "bob", tight, queued=80, reserved=TOP_UP_AT) is None


# --- the relay -------------------------------------------------------------------------

ROOMY = {"send_burst_user": 500, "send_burst_pair": 500, "send_rate_pair": 500.0}


async def contacts(relay: RunningRelay, clients: Clients) -> tuple[RawClient, RawClient]:
    """alice and bob, each having written to the other, and alice holding a lease to bob
    (her second chat earned it: the first was her first to him, which changes the pair)."""
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.send_message("alice", b"hi"), Sent)
    for body in (b"hello", b"earns the lease"):
        assert isinstance(await alice.send_message("bob", body), Sent)
    await settled(relay, "bob")
    delivered = await bob.deliveries(2)
    await bob.send(Ack(delivery_ids=tuple(d.delivery_id for d in delivered)))
    await alice.send(Ack(delivery_ids=((await alice.push(Deliver)).delivery_id,)))
    return alice, bob


async def send_unanswered(client: RawClient, to: str, body: bytes, msg_id: bytes) -> int:
    request_id = client.request_id()
    await client.send(Send(id=request_id, to=to, msg_id=msg_id, intent="chat", body=body))
    return request_id


async def nothing_pushed(client: RawClient) -> None:
    """A round trip on ``client``'s connection: whatever the relay pushed to it before is
    in its inbox by the time the answer arrives; there must be no DELIVER."""
    answer = await client.request(lambda i: StatementsList(id=i, after=0))
    assert not isinstance(answer, Error)
    assert not [f for f in client.inbox if isinstance(f, Deliver)]


@pytest.fixture
def hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file that holds the writer before its next batch while it exists."""
    path = tmp_path / "hold"
    monkeypatch.setenv(HOLD_BEFORE_BATCH_ENV, str(path))
    return path


async def test_a_contacts_chat_is_delivered_before_the_writer_has_read_it(
    config: RelayConfig, clients: Clients, clock: FakeClock, hold: Path
) -> None:
    """The point of leases (issue 19): the DELIVER leaves while the writer has not even
    decided the SEND; SENT still waits for the commit and carries the DELIVER's time, the
    delivery id is the one the store keeps, and bob's ACK of it deletes it."""
    async with RelayFixture(replace(config, **ROOMY), clock) as relay, released(hold):
        alice, bob = await contacts(relay, clients)
        hold.touch()
        request_id = await send_unanswered(alice, "bob", b"no round trip", os.urandom(16))
        deliver = await bob.push(Deliver)
        assert deliver.body == b"no round trip"
        assert not [f for f in alice.inbox if isinstance(f, Sent)]  # the writer holds it
        assert relay.ctx.metrics.delivers["before_decision"] == 1
        hold.unlink()
        sent = await alice.response(request_id)
        assert isinstance(sent, Sent) and sent.at == deliver.sent_at
        assert config.db_path is not None
        assert count_queued(config.db_path) == 1
        await bob.send(Ack(delivery_ids=(deliver.delivery_id,)))
        await until(lambda: count_queued(config.db_path) == 0)


async def test_a_pushed_chat_waits_for_company_and_a_send_awaiting_its_decision_does_not(
    config: RelayConfig, clients: Clients, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19 (``Writer.call``'s spacing): a chat pushed under a lease goes to the writer
    with whatever comes within ``HAND_OVER_SPACING_S`` — its DELIVER has left, only its
    SENT waits — while a SEND that waits for its decision goes at once and takes it along."""
    monkeypatch.setattr(writer_module, "HAND_OVER_SPACING_S", 60.0)
    monkeypatch.setattr(housekeeping, "PROBE_INTERVAL_S", 600.0)  # no store job meanwhile
    quiet = replace(config, **ROOMY, sth_interval_s=600.0, purge_interval_s=600.0)
    async with RelayFixture(replace(quiet, checkpoint_interval_s=600.0), clock) as relay:
        await clients.registered(relay.url, "carol")
        alice, bob = await contacts(relay, clients)  # its hand-overs just now
        request_id = await send_unanswered(alice, "bob", b"pushed", os.urandom(16))
        assert (await bob.push(Deliver)).body == b"pushed"
        with pytest.raises(TimeoutError):  # held for company (a store request would take it)
            await asyncio.wait_for(alice.response(request_id), timeout=0.5)
        await alice.send_message("carol", b"a first word waits for its decision")
        assert isinstance(await alice.response(request_id), Sent)


async def test_a_block_ends_the_lease_before_the_writer_sees_it(
    config: RelayConfig, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §6.4.6: every STATEMENT ends every lease before it reaches the store, so a
    chat sent after bob's BLOCK got its OK is refused, and never pushed first."""
    async with RelayFixture(replace(config, **ROOMY), clock) as relay:
        alice, bob = await contacts(relay, clients)
        await stated(bob, "block", "alice", clock())
        answer = await alice.send_message("bob", b"after the block")
        assert error_code(answer) == ErrorCode.RECIPIENT_UNAVAILABLE
        await nothing_pushed(bob)


async def test_a_block_ends_the_lease_when_it_is_handed_over_not_when_it_is_answered(
    config: RelayConfig, clients: Clients, clock: FakeClock, hold: Path
) -> None:
    """SPEC §6.4.6, §7.4, the moment that matters: bob's BLOCK is held undecided in the
    writer, and alice's chat comes after it. It must wait for its decision, behind the
    block, and get 400 — ended only at the block's answer, the lease would push it first
    and the writer, deciding it after the block, would refuse a chat bob already holds
    (``lease_broken``: 900 to alice, 1011 to bob). Her chat from before the block was
    pushed first, as the rules then allowed; the block purges it like any undelivered
    envelope, so bob's next connection does not get it again."""
    async with RelayFixture(replace(config, **ROOMY), clock) as relay, released(hold):
        alice, bob = await contacts(relay, clients)
        received = relay.ctx.metrics.frames_received
        delivers = relay.ctx.metrics.delivers
        hold.touch()
        before = await send_unanswered(alice, "bob", b"before the block", os.urandom(16))
        assert (await bob.push(Deliver)).body == b"before the block"
        statements, sends = received[Statement.TYPE], received[Send.TYPE]
        block = statement_bytes(bob, "block", "alice", clock())
        block_id = bob.request_id()
        await bob.send(Statement(id=block_id, statement=block))
        await until(lambda: received[Statement.TYPE] == statements + 1)
        after = await send_unanswered(alice, "bob", b"after the block", os.urandom(16))
        await until(lambda: received[Send.TYPE] == sends + 1)
        assert delivers["before_decision"] == 1  # only the chat from before the block
        hold.unlink()
        assert isinstance(await alice.response(before), Sent)
        assert error_code(await alice.response(after)) == ErrorCode.RECIPIENT_UNAVAILABLE
        assert isinstance(await bob.response(block_id), Ok)
        await nothing_pushed(bob)
        assert config.db_path is not None
        assert count_queued(config.db_path) == 0  # the pushed chat was purged by the block
        await bob.close()
        again, _ = await clients.logged_in(relay.url, "bob", bob.key)
        await settled(relay, "bob")
        await nothing_pushed(again)


async def test_a_resend_of_a_msg_id_seen_lately_waits_for_the_store(
    config: RelayConfig, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §6.4.6: a resend after a lost SENT (the common case: a reconnect) comes soon;
    the relay process remembers the msg_ids it handed over lately, so it is answered from
    the store with its original time and bob gets no second DELIVER."""
    async with RelayFixture(replace(config, **ROOMY), clock) as relay:
        alice, bob = await contacts(relay, clients)
        msg_id = os.urandom(16)
        first = await alice.request(
            lambda i: Send(id=i, to="bob", msg_id=msg_id, intent="chat", body=b"once")
        )
        assert isinstance(first, Sent)
        await bob.send(Ack(delivery_ids=((await bob.push(Deliver)).delivery_id,)))
        again = await alice.request(
            lambda i: Send(id=i, to="bob", msg_id=msg_id, intent="chat", body=b"once")
        )
        assert isinstance(again, Sent) and again.at == first.at
        await nothing_pushed(bob)


async def test_a_resend_or_a_reuse_pushed_first_is_withdrawn_and_the_connection_stays(
    config: RelayConfig, clients: Clients, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6.3.2, §6.4.6: a msg_id handed over long ago (here: the relay process keeps
    none) is not looked up before the push (that was 11 % of the loop's time): a resend
    or a reuse of it is pushed first under the lease, then answered — a resend with its
    original time, a reuse with 403 — and its DELIVER withdrawn: never stored, bob's ACK
    of it deletes nothing, his connection stays open (1011 would let any contact
    disconnect him at will) and its place in his window is free again. bob drops the
    resend by (sender, msg_id), as any redelivery (§6.4.3)."""
    monkeypatch.setattr(relayleases, "RECENT_MSG_IDS", 0)
    windowed = replace(config, delivery_window=2, **ROOMY)
    async with RelayFixture(windowed, clock) as relay:
        alice, bob = await contacts(relay, clients)
        metrics = relay.ctx.metrics
        msg_id = os.urandom(16)
        first = await alice.request(
            lambda i: Send(id=i, to="bob", msg_id=msg_id, intent="chat", body=b"once")
        )
        assert isinstance(first, Sent)
        original = await bob.push(Deliver)
        again = await alice.request(
            lambda i: Send(id=i, to="bob", msg_id=msg_id, intent="chat", body=b"once")
        )
        assert isinstance(again, Sent) and again.at == first.at
        resent = await bob.push(Deliver)
        await settled(relay, "bob")  # a resend makes the outbox page once more
        reused = await alice.request(
            lambda i: Send(id=i, to="bob", msg_id=msg_id, intent="chat", body=b"other")
        )
        assert error_code(reused) == ErrorCode.MESSAGE_ID_REUSED
        pushed = [resent, await bob.push(Deliver)]
        assert [(d.msg_id, d.body) for d in pushed] == [(msg_id, b"once"), (msg_id, b"other")]
        assert metrics.delivers["before_decision"] >= 3
        outbox = outbox_of(relay, "bob")
        assert outbox.in_flight == {original.delivery_id}  # the two withdrawn: room again
        await bob.send(Ack(delivery_ids=tuple(d.delivery_id for d in pushed)))
        assert config.db_path is not None
        assert count_queued(config.db_path) == 1  # only the original, not yet acknowledged
        await bob.send(Ack(delivery_ids=(original.delivery_id,)))
        await until(lambda: count_queued(config.db_path) == 0)
        # The window of 2 is free: two new chats come, on the same connection.
        for body in (b"next", b"and next"):
            assert isinstance(await alice.send_message("bob", body), Sent)
        assert [d.body for d in await bob.deliveries(2)] == [b"next", b"and next"]
        assert relay.ctx.sessions.get("bob") is not None


async def test_the_room_a_lease_sets_aside_keeps_the_queue_within_its_cap(
    config: RelayConfig, clients: Clients, clock: FakeClock
) -> None:
    """SPEC §6.3.5, §6.4.6: bob is away; alice's lease sets room aside in his queue, so
    carol's chats are refused (401) once the queue and that room reach the cap, and every
    one of alice's leased chats is still taken. The queue never holds more than the cap."""
    cap = 12
    capped = replace(config, queue_cap=cap, queue_share_per_sender=cap, **ROOMY)
    async with RelayFixture(capped, clock) as relay:
        alice = await clients.registered(relay.url, "alice")
        carol = await clients.registered(relay.url, "carol")
        bob = await clients.registered(relay.url, "bob")
        for friend in (alice, carol):
            assert isinstance(await bob.send_message(friend.handle, b"hi"), Sent)
            assert isinstance(await friend.send_message("bob", b"hello"), Sent)
        await bob.deliveries(2)  # not acknowledged: 2 queued
        await bob.close()
        assert isinstance(await alice.send_message("bob", b"earns the lease"), Sent)
        # 3 queued; alice's lease covers 12 - 3 = 9 more, so carol finds no room at all.
        assert error_code(await carol.send_message("bob", b"no room")) == ErrorCode.QUEUE_FULL
        answers = [await alice.send_message("bob", b"%d" % n) for n in range(9)]
        assert all(isinstance(a, Sent) for a in answers)
        assert error_code(await alice.send_message("bob", b"full")) == ErrorCode.QUEUE_FULL
        assert db_rows(capped, "SELECT COUNT(*) FROM queue WHERE recipient = 'bob'") == [(cap,)]


async def test_deliveries_are_numbered_on_after_a_restart(
    config: RelayConfig, clients: Clients, clock: FakeClock
) -> None:
    """The relay process numbers deliveries from where the file's sequence stands, so a
    relay started again on the file goes on above every id it gave before."""
    async with RelayFixture(replace(config, **ROOMY), clock) as relay:
        alice, bob = await contacts(relay, clients)
        assert isinstance(await alice.send_message("bob", b"before"), Sent)
        before = (await bob.push(Deliver)).delivery_id
        await alice.close()
        await bob.close()
    async with RelayFixture(replace(config, **ROOMY), clock) as relay:
        alice, _ = await clients.logged_in(relay.url, "alice", alice.key)
        bob, _ = await clients.logged_in(relay.url, "bob", bob.key)
        assert (await bob.push(Deliver)).delivery_id == before  # not acknowledged: again
        clock.advance(1_000)  # the buckets taken over from the first relay refill
        assert isinstance(await alice.send_message("bob", b"after"), Sent)
        assert (await bob.push(Deliver)).delivery_id > before


async def test_a_chat_is_not_pushed_first_past_an_earlier_one_still_undecided(
    config: RelayConfig, clients: Clients, clock: FakeClock, hold: Path
) -> None:
    """Order (SPEC §6.4.6): carol's chat to bob waits for its decision (her first to him
    since he wrote: it changes the pair, so it earns no lease); alice's chat after it,
    under her lease, must not be pushed first — its delivery id is higher, and the
    outbox's cursor would move past carol's, which would then wait for bob's next page.
    Both come once the writer runs, carol's first."""
    async with RelayFixture(replace(config, **ROOMY), clock) as relay, released(hold):
        alice, bob = await contacts(relay, clients)
        carol = await clients.registered(relay.url, "carol")
        assert isinstance(await bob.send_message("carol", b"hi carol"), Sent)
        await carol.send(Ack(delivery_ids=((await carol.push(Deliver)).delivery_id,)))
        # alice's lease outlived carol's registration: her next chat is pushed first.
        assert isinstance(await alice.send_message("bob", b"pushed first"), Sent)
        await bob.send(Ack(delivery_ids=((await bob.push(Deliver)).delivery_id,)))
        assert relay.ctx.metrics.delivers["before_decision"] == 1
        hold.touch()
        first = await send_unanswered(carol, "bob", b"undecided", os.urandom(16))
        second = await send_unanswered(alice, "bob", b"leased", os.urandom(16))
        await until(lambda: relay.ctx.metrics.frames_received[Send.TYPE] == 7)
        assert relay.ctx.metrics.delivers["before_decision"] == 1
        hold.unlink()
        assert [d.body for d in await bob.deliveries(2)] == [b"undecided", b"leased"]
        assert isinstance(await carol.response(first), Sent)
        assert isinstance(await alice.response(second), Sent)


def test_the_writer_refuses_a_delivery_id_that_does_not_follow_the_last(tmp_path: Path) -> None:
    """``MessageQueue.next_id``: a DELIVER may have left under the id the relay process
    gave, so an id at or below the last one stored (a second numbering on the file) fails
    the job rather than store the envelope out of order or under another's id."""
    tables = Tables(connect(tmp_path / "relay.db"))
    alice = Account("alice", "user", b"")

    def add(msg_id: bytes, delivery_id: int | None) -> tuple[int, int] | None:
        return tables.queue.add_if_new(
            "bob", alice, msg_id, "chat", None, None, b"x", msg_id * 2, 0, False, delivery_id
        )

    assert add(b"1" * 16, None) == (1, 0)  # SQLite's own numbering
    assert add(b"2" * 16, 10) == (10, 1)  # the relay process's, above it
    for stale in (10, 7):
        with pytest.raises(LeaseBroken):
            add(os.urandom(16), stale)
    assert add(b"3" * 16, None) == (11, 10)
