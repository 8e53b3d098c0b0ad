"""Two relay workers sharing one PostgreSQL store, in this process (issue 14; SPEC §1.2.3,
§5.4, §6.3, §6.4, §7.4–7.5): what happens "in this process" with one relay happens across
the two, carried by the hints of server/routing.py over ``LISTEN``/``NOTIFY``.

Every test starts worker A and worker B with ``serve()`` on the module's database, and
puts the two parties of each exchange on different workers. Waits are bounded; where a
test says "promptly" the bound is :data:`PROMPT_S`, far below any period the relay has
(its only timers are the purge and checkpoint, an hour apart here).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time

import asyncpg
import pytest

from blindrelay.protocol.errors import ErrorCode, StoreUnavailable
from blindrelay.protocol.frames import (
    Ack,
    Bundle,
    BundleFetch,
    Deliver,
    Error,
    PrekeysLow,
    Send,
    Sent,
)
from blindrelay.protocol.signed import ConsentStatement, unverified_body
from blindrelay.server.logs import REFUSAL_LOG_BURST, REFUSAL_LOG_PER_S
from blindrelay.server.relay import serve
from blindrelay.server.routing import CHANNEL, Hint, HintKind, decode, envelope_hint
from blindrelay.server.routing_postgresql import PostgresRouter

from ..pg import RESTART_TIMEOUT_S, PostgresDatabase
from .conftest import Clients, FakeClock, until
from .consent_helpers import stated
from .inmemory import log_lines
from .twoworkers import PROMPT_S, QUIET_S, answered, handle, worker_config, workers


async def test_a_message_reaches_a_recipient_on_the_other_worker_promptly(
    pg_database: PostgresDatabase, clock: FakeClock, clients: Clients
) -> None:
    async with workers(pg_database, clock) as w:
        alice = await clients.registered(w.a.url, handle("alice"))
        bob = await clients.registered(w.b.url, handle("bob"))
        await answered(bob)  # its first page is done: what follows must be pushed to it
        for n in range(3):
            started = time.monotonic()
            assert isinstance(await alice.send_message(bob.handle, b"m%d" % n), Sent)
            deliver = await asyncio.wait_for(bob.push(Deliver), PROMPT_S)
            assert deliver.body == b"m%d" % n and deliver.sender == alice.handle
            assert time.monotonic() - started < PROMPT_S
            await bob.send(Ack(delivery_ids=(deliver.delivery_id,)))


async def test_without_hints_nothing_arrives_until_the_catch_up(
    pg_database: PostgresDatabase, clock: FakeClock, clients: Clients
) -> None:
    """The previous test's promptness is the hint's, not a poll's: with B's router stopped,
    B delivers nothing of what A committed — until B catches up from the tables, as it does
    after every reconnection of its router or its store."""
    async with workers(pg_database, clock) as w:
        alice = await clients.registered(w.a.url, handle("alice"))
        bob = await clients.registered(w.b.url, handle("bob"))
        await answered(bob)
        await w.b.router.close()
        assert isinstance(await alice.send_message(bob.handle, b"unannounced"), Sent)
        await asyncio.sleep(QUIET_S)  # watched, not waited for: a poll would deliver it
        await answered(bob)
        assert not [frame for frame in bob.inbox if isinstance(frame, Deliver)]
        w.b.catch_up()
        deliver = await asyncio.wait_for(bob.push(Deliver), PROMPT_S)
        assert deliver.body == b"unannounced"


async def test_a_login_on_one_worker_replaces_the_connection_on_the_other(
    pg_database: PostgresDatabase, clock: FakeClock, clients: Clients
) -> None:
    async with workers(pg_database, clock) as w:
        name = handle("alice")
        on_a = await clients.registered(w.a.url, name)
        on_b, _ = await clients.logged_in(w.b.url, name, on_a.key)
        assert await asyncio.wait_for(on_a.closed(), PROMPT_S) == 4000
        assert on_a.ws.close_reason == "replaced"
        # SPEC §10: logged in while the other connection was open, it starts from empty
        # buckets; time refills them.
        clock.advance(60_000)
        await answered(on_b)  # the newer one stays
        again_on_a, _ = await clients.logged_in(w.a.url, name, on_a.key)
        assert await asyncio.wait_for(on_b.closed(), PROMPT_S) == 4000
        clock.advance(60_000)
        await answered(again_on_a)
        assert w.b.ctx.sessions.get(name) is None
        assert w.a.ctx.sessions.get(name) is not None


async def test_a_login_missed_while_hints_were_lost_is_caught_up(
    pg_database: PostgresDatabase, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §1.2.3 across a lost LISTEN: alice logs in on B while A hears no hints; A's
    catch-up (after every reconnection of its router or store) reads the logins from the
    tables and replaces the older connection, as the hint would have."""
    async with workers(pg_database, clock) as w:
        name = handle("alice")
        on_a = await clients.registered(w.a.url, name)
        await w.a.router.close()
        on_b, _ = await clients.logged_in(w.b.url, name, on_a.key)
        clock.advance(60_000)  # SPEC §10: a login beside a live connection starts empty
        await answered(on_b)
        await answered(on_a)  # unannounced: A still serves the older connection
        assert w.a.ctx.sessions.get(name) is not None
        w.a.catch_up()
        assert await asyncio.wait_for(on_a.closed(), PROMPT_S) == 4000
        assert on_a.ws.close_reason == "replaced"
        assert w.a.ctx.sessions.get(name) is None
        await answered(on_b)  # the newer one stays


async def test_a_revoke_on_one_worker_withdraws_what_the_other_holds_for_the_business(
    pg_database: PostgresDatabase, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §7.4–7.5: the revoke supersedes the grant's receipt, which the business's
    worker has already pushed (in flight, unacknowledged, filling a window of 1): it is
    withdrawn there, so the revoke's receipt comes without the grant's ACK."""
    async with workers(pg_database, clock, delivery_window=1) as w:
        shop = await clients.registered(w.a.url, handle("shop"), kind="business")
        user = await clients.registered(w.b.url, handle("user"))
        await answered(shop)
        await stated(user, "grant", shop.handle, clock.now, ("utility",))
        grant = await asyncio.wait_for(shop.push(Deliver), PROMPT_S)
        assert grant.intent == "statement"
        assert unverified_body(ConsentStatement, grant.body).action == "grant"
        await stated(user, "revoke", shop.handle, clock.now, ("utility",))
        revoke = await asyncio.wait_for(shop.push(Deliver), PROMPT_S)  # no ACK sent
        assert unverified_body(ConsentStatement, revoke.body).action == "revoke"
        outbox = w.a.ctx.sessions.get(shop.handle).outbox  # type: ignore[union-attr]
        assert outbox is not None and grant.delivery_id not in outbox.in_flight


async def test_a_low_prekey_pool_is_told_to_its_owner_on_the_other_worker(
    pg_database: PostgresDatabase, clock: FakeClock, clients: Clients
) -> None:
    async with workers(pg_database, clock) as w:
        owner = await clients.registered(w.a.url, handle("owner"))
        assert not isinstance(await owner.upload_prekeys(one_time=3), Error)
        fetcher = await clients.registered(w.b.url, handle("fetcher"))
        bundle = await fetcher.request(lambda i: BundleFetch(id=i, handle=owner.handle))
        assert isinstance(bundle, Bundle) and bundle.one_time is not None
        low = await asyncio.wait_for(owner.push(PrekeysLow), PROMPT_S)
        assert low.remaining == 2


def test_a_database_restart_answers_902_never_sent_and_loses_nothing_acknowledged(
    pg_database: PostgresDatabase,
) -> None:
    """SPEC §6.3: PostgreSQL crash-restarted (``-m immediate``) while alice, on worker A,
    keeps sending to bob, on worker B. Every SEND is answered SENT or 902 (never another
    error, never SENT for what was not committed); 902s are sent again with the same
    msg_id; both workers recover without a restart, keeping their connections, and bob
    gets every message acknowledged. A sync test: the restart waits for other test
    modules on this server, longer than an async test's bound."""
    asyncio.run(asyncio.wait_for(_restart_scenario(pg_database), RESTART_TIMEOUT_S + 60))


async def _restart_scenario(pg_database: PostgresDatabase) -> None:
    many_sends = {"send_rate_user": 10_000.0, "send_burst_user": 10_000,
                  "send_rate_pair": 10_000.0, "send_burst_pair": 10_000,
                  "queue_cap": 100_000, "queue_share_per_sender": 100_000}  # fmt: skip
    clock = FakeClock()
    async with Clients() as clients, workers(pg_database, clock, **many_sends) as w:
        alice = await clients.registered(w.a.url, handle("alice"))
        bob = await clients.registered(w.b.url, handle("bob"))
        assert isinstance(await bob.send_message(alice.handle, b"hi"), Sent)  # contacts
        sent: dict[bytes, bytes] = {}  # msg_id → body, for every SENT
        refused: dict[bytes, bytes] = {}  # answered 902: to be sent again
        codes: set[int] = set()

        async def send(msg_id: bytes, body: bytes) -> None:
            answer = await alice.request(
                lambda i: Send(id=i, to=bob.handle, msg_id=msg_id, intent="chat", body=body)
            )
            if isinstance(answer, Sent):
                sent[msg_id] = body
                refused.pop(msg_id, None)
                return
            assert isinstance(answer, Error), answer
            assert answer.code == ErrorCode.STORE_UNAVAILABLE, answer
            assert answer.retry_after is not None and answer.retry_after >= 1
            codes.add(answer.code)
            refused[msg_id] = body

        for n in range(5):
            await send(os.urandom(16), b"before %d" % n)
        assert len(sent) == 5
        restart = asyncio.create_task(pg_database.restart_async())
        n = 0
        while not restart.done() and n < 2000:
            await send(os.urandom(16), b"during %d" % n)
            n += 1
            await asyncio.sleep(0.01)  # pacing, not synchronisation
        await restart
        assert ErrorCode.STORE_UNAVAILABLE in codes  # the outage was met
        while refused:  # the SDK's behaviour: the same msg_id again after retry_after
            msg_id, body = next(iter(refused.items()))
            await asyncio.sleep(0.05)
            await send(msg_id, body)
        assert not w.a.failed.is_set() and not w.b.failed.is_set()

        received: dict[bytes, bytes] = {}
        while not sent.keys() <= received.keys():
            deliver = await asyncio.wait_for(bob.push(Deliver), 10.0)
            received[deliver.msg_id] = deliver.body
            await bob.send(Ack(delivery_ids=(deliver.delivery_id,)))
        assert {m: received[m] for m in sent} == sent
        await answered(alice)
        await answered(bob)


def test_an_envelope_hint_round_trips_and_too_big_a_one_is_a_page_hint() -> None:
    """server/routing.py: an ENVELOPE hint carries the queue row through its text form;
    one over PostgreSQL's NOTIFY limit becomes QUEUED (the recipient's worker pages); a
    malformed row is refused, never trusted."""
    row = [7, "bob", "alice", "user", b"m" * 16, "chat", None, None, 5, b"c" * 1024]
    hint = envelope_hint("feedfacefeedface", 3, row)
    assert hint.kind is HintKind.ENVELOPE
    again = decode(hint.encode())
    assert (again.handle, again.value, again.row()) == ("bob", 3, row)
    big = envelope_hint("feedfacefeedface", 3, [*row[:9], b"c" * 8000])
    assert (big.kind, big.handle) == (HintKind.QUEUED, "bob")
    forged = Hint(HintKind.ENVELOPE, "bob", "feedfacefeedface", 3, envelope=b"\x93\x01\x02\x03")
    with pytest.raises(ValueError):
        forged.row()


async def test_a_worker_stopped_during_a_store_outage_ends_cleanly(
    pg_database: PostgresDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM while PostgreSQL cannot be reached: ``close()`` cannot commit its final
    barrier, says so in the log and returns (no StoreUnavailable out of it, no hang)."""
    relay = await serve(worker_config(pg_database.url), clock=FakeClock())
    admin = await asyncpg.connect(pg_database.server_url)
    name = pg_database.name
    try:
        # No new connection to the database (superusers included), then cut the relay's.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        with pytest.raises(StoreUnavailable):  # the store learns of it at its next batch
            await relay.ctx.store.submit("noop")
        assert not relay.ctx.store.available
        with caplog.at_level("WARNING", logger="blindrelay"):
            await asyncio.wait_for(relay.close(), 10)
        assert "stopped_during_store_outage" in caplog.text
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_payloads_no_worker_sealed_are_logged_within_a_budget(
    pg_database: PostgresDatabase, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """T65: PostgreSQL checks no privilege for NOTIFY, so any role that can connect to the
    store's database can send on the hint channel; every payload no worker sealed was
    dropped with a WARNING line, on every worker — one such role wrote every worker's log
    as fast as it could notify (found in review, as T53 for the peer links). Now each
    worker's lines share one budget (``logs.RefusalLog``), the rest are counted."""
    count = 3 * REFUSAL_LOG_BURST
    async with workers(pg_database, clock) as w:
        routers: list[PostgresRouter] = []
        for router in (w.a.router, w.b.router):
            assert isinstance(router, PostgresRouter)
            routers.append(router)
        stranger = await asyncpg.connect(pg_database.url)
        try:
            started = time.monotonic()
            with caplog.at_level(logging.INFO, logger="blindrelay"):
                for n in range(count):
                    await stranger.execute("SELECT pg_notify($1, $2)", CHANNEL, f"x{n} junk")
                await until(lambda: all(r.bad_hints == count for r in routers))
            elapsed = time.monotonic() - started
        finally:
            await stranger.close()
    lines = [line for line in log_lines(caplog) if line["event"] == "router_bad_hint"]
    per_worker = REFUSAL_LOG_BURST + math.ceil(elapsed * REFUSAL_LOG_PER_S)
    assert 2 <= len(lines) <= 2 * per_worker
