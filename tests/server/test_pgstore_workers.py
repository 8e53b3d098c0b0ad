"""The PostgreSQL back end across workers (tests/pg.py): several stores on one database
hand out delivery ids, one-time prekeys and queue room as one relay would, and hint each
other only on commit. The back end alone: test_pgstore.py; its upgrades:
test_pgstore_upgrades.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import asyncpg
import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import limits
from blindrelay.protocol.errors import InvalidProfile, QueueFull
from blindrelay.protocol.signed import make_statement
from blindrelay.server.routing import CHANNEL, Hint, HintKind
from blindrelay.server.store.postgresql import operations, sends
from blindrelay.server.store.postgresql.store import (
    PostgresStore,
    connect,
)
from blindrelay.server.store.postgresql.tx import Tx

from ..pg import PostgresDatabase
from .pgstore_support import SEAL, counts, heard_by, send_chat, started, users


async def test_an_ack_takes_no_lock_its_recipients_senders_wait_for(
    pg_database: PostgresDatabase,
) -> None:
    """An ACK only deletes what was pushed and counts it apart (``queue_acks``): the
    recipient's worker does not wait for a worker that holds the recipient's lock — a
    batch of SENDs to it — nor that one for the ACK's commit."""
    url = pg_database.fresh_schema()
    async with started(url) as store:
        await users(store, "alice", "bob")
        first, _, _ = await send_chat(store, "alice", "bob", 1)
        holder = await asyncpg.connect(url)
        try:
            async with holder.transaction():  # another worker's batch sending to bob
                await holder.execute("SELECT 1 FROM queue_counts WHERE handle = 'bob' FOR UPDATE")
                acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                store.call_many("acknowledge", ["bob", [first]], lambda ok, v: acked.set_result(v))
                assert await asyncio.wait_for(acked, 30) == 1
        finally:
            await holder.close()
        assert await counts(url, "bob") == (0, 0)


async def test_a_profile_put_checked_with_the_old_key_never_outlives_a_rotation_elsewhere(
    pg_database: PostgresDatabase,
) -> None:
    """SPEC §3.4: a rotation drops the profile the old key signed. A PROFILE_PUT checked
    with the old key on another worker (a second connection of the business) while the
    rotation's transaction is open must be refused once it committed, not stored after
    the rotation's delete: it takes the account's lock, as the rotation does."""
    url = pg_database.fresh_schema()
    old, new = b"o" * 32, b"n" * 32
    async with started(url) as store:
        await store.submit("create_account", "shop", "business", old, 0)
        await store.submit("put_profile", "shop", old, b"first", 0)
        holder = await asyncpg.connect(url)
        try:
            async with holder.transaction():  # another worker's batch rotating the key
                await holder.execute("SELECT 1 FROM queue_counts WHERE handle = 'shop' FOR UPDATE")
                await operations.rotate_identity(Tx(holder, "w2"), "shop", old, new, 0)
                put = store.submit("put_profile", "shop", old, b"old key's", 0)
                await _until_one_waits_for_a_lock(holder, put)
            with pytest.raises(InvalidProfile):
                await asyncio.wait_for(put, 30)
        finally:
            await holder.close()
        assert await store.submit("fetch_profile", "shop", 0) == [new, None, None]


async def _until_one_waits_for_a_lock(conn: Any, call: asyncio.Future[Any]) -> None:
    """Until ``call``'s transaction waits for a lock ``conn``'s holds (it has not run)."""
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
    )
    for _ in range(3000):
        if await conn.fetchval(waiting) or call.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the call neither ran nor waited for the lock")


async def test_a_page_vouches_for_every_id_up_to_the_highest_ever_queued(
    pg_database: PostgresDatabase,
) -> None:
    """A page answers the recipient's ``last_id`` read with its rows: an id up to it that
    is not among them was acknowledged or withdrawn, so an outbox never pushes it when
    another worker's link announces it late (SPEC §7.4); an unknown handle's is ``after``."""
    async with started(pg_database.fresh_schema()) as store:
        await users(store, "alice", "bob")
        first, second = [(await send_chat(store, "alice", "bob", n))[0] for n in (1, 2)]
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        store.call_many("acknowledge", ["bob", [second]], lambda ok, v: acked.set_result(v))
        assert await acked == 1
        rows, high = await store.submit("page", "bob", 0, 10, 0)
        assert [row[0] for row in rows] == [first] and high == second
        assert await store.submit("page", "bob", second + 5, 10, 0) == [[], second + 5]
        assert await store.submit("page", "nobody", 3, 10, 0) == [[], 3]


async def test_the_queue_cap_counts_what_another_workers_acks_freed(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    async with started(url) as sender, started(url) as recipient:
        await users(sender, "alice", "bob")
        ids = [(await send_chat(sender, "alice", "bob", n, queue_cap=2))[0] for n in (1, 2)]
        with pytest.raises(QueueFull):
            await send_chat(sender, "alice", "bob", 3, queue_cap=2)
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        recipient.call_many("acknowledge", ["bob", ids[:1]], lambda ok, v: acked.set_result(v))
        assert await acked == 1
        assert await counts(url, "bob") == (1, 1)
        await send_chat(sender, "alice", "bob", 3, queue_cap=2)
        with pytest.raises(QueueFull):
            await send_chat(sender, "alice", "bob", 4, queue_cap=2)
        assert await counts(url, "bob") == (2, 2)


async def test_two_workers_never_hand_out_one_one_time_prekey_twice(
    pg_database: PostgresDatabase,
) -> None:
    """2 workers × 50 concurrent bundle fetches of one owner holding 10,000 one-time
    prekeys: every fetch gets a key, and no key is issued twice."""
    url = pg_database.fresh_schema()
    async with started(url) as a, started(url) as b:
        await users(a, "owner", *(f"r{n}" for n in range(100)))
        signed = [1, b"s" * 32, b"g" * 64]
        keys = [[n, n.to_bytes(32, "big")] for n in range(10_000)]
        await a.submit("upload_prekeys", "owner", b"owner".ljust(32, b"."), signed, keys, 10_000, 0)

        async def fetch(store: PostgresStore, n: int) -> Any:
            await asyncio.sleep(0.001 * (n % 7))  # spread over several batches
            return await store.submit("take_bundle", f"r{n}", "user", "owner", 0, 1e9, 10**6)

        bundles = await asyncio.gather(
            *(fetch(a, n) for n in range(50)), *(fetch(b, n) for n in range(50, 100))
        )
    issued = [bundle[3][0] for bundle in bundles]
    assert len(issued) == 100 and len(set(issued)) == 100
    assert min(bundle[4] for bundle in bundles) == 10_000 - 100


async def test_a_pager_never_sees_a_lower_delivery_id_after_a_higher_one(
    pg_database: PostgresDatabase,
) -> None:
    """SENDs to one recipient from two workers commit in delivery-id order (the count
    row is locked before ids are drawn), so a pager's cursor never passes an id that
    commits later."""
    url = pg_database.fresh_schema()
    async with started(url) as a, started(url) as b, started(url) as pager:
        await users(a, "bob", *(f"s{n}" for n in range(8)))
        done = asyncio.Event()
        seen: set[int] = set()
        late: list[int] = []

        async def page() -> None:
            cursor = 0
            while True:
                finished = done.is_set()
                rows, _high = await pager.submit("page", "bob", 0, 10_000, 0)
                for row in rows:
                    if row[0] not in seen:
                        seen.add(row[0])
                        if row[0] < cursor:
                            late.append(row[0])  # committed after a higher id was seen
                cursor = max([cursor, *seen])
                if finished:
                    return

        async def send(store: PostgresStore, sender: str) -> None:
            for n in range(25):
                await send_chat(store, sender, "bob", n)

        paging = asyncio.create_task(page())
        await asyncio.gather(*(send(a if n % 2 else b, f"s{n}") for n in range(8)))
        done.set()
        await paging
        assert late == [] and len(seen) == 200


async def test_hints_are_emitted_inside_the_transaction_and_only_on_commit(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    heard: asyncio.Queue[Hint] = asyncio.Queue()
    listener = await asyncpg.connect(url)
    await listener.add_listener(CHANNEL, heard_by(heard))
    try:
        async with started(url, origin="feedfacefeedface") as store:
            await users(store, "alice", "bob", "owner")
            await store.submit("open_session", "bob", "0123456789abcdef", 1, 0)  # elsewhere
            assert heard.empty()  # registering changes nothing another worker acts on
            delivery_id, _, previous = await send_chat(store, "alice", "bob", 1)
            carried = await heard.get()  # the envelope rides its hint
            assert (carried.kind, carried.handle, carried.origin, carried.value) == (
                HintKind.ENVELOPE,
                "bob",
                "feedfacefeedface",
                previous,
            )
            msg_id = (1).to_bytes(16, "big")
            assert carried.row() == [
                delivery_id,
                "bob",
                "alice",
                "user",
                msg_id,
                "chat",
                None,
                None,
                5,
                b"x",
            ]
            with pytest.raises(QueueFull):
                await send_chat(store, "alice", "bob", 2, queue_cap=1)  # refused: no hint
            first = await store.submit("login_counts", "bob", 0)
            second = await store.submit("login_counts", "bob", 0)
            assert (first[3], second[3]) == (1, 2)
            assert await heard.get() == Hint(HintKind.LOGIN, "bob", "feedfacefeedface", 1)
            assert await heard.get() == Hint(HintKind.LOGIN, "bob", "feedfacefeedface", 2)
            signed = [1, b"s" * 32, b"g" * 64]
            keys = [[n, bytes([n]) * 32] for n in range(limits.PREKEY_LOW_WATER)]
            await store.submit(
                "upload_prekeys", "owner", b"owner".ljust(32, b"."), signed, keys, 100, 0
            )
            await store.submit("take_bundle", "alice", "user", "owner", 0)
            low = limits.PREKEY_LOW_WATER - 1
            assert await heard.get() == Hint(HintKind.PREKEYS_LOW, "owner", "feedfacefeedface", low)
            assert heard.empty()
    finally:
        await listener.close()


async def test_only_a_recipient_served_on_another_worker_gets_a_hint_and_it_carries_the_envelope(
    pg_database: PostgresDatabase,
) -> None:
    """Where a recipient's live connection is (``account_sessions``, read under its lock,
    which a login's ``open_session`` takes too) decides: here, this worker pushes it or
    its outbox's first page reads it; nowhere, its next login pages it; on another
    worker (no peer link here), the envelope rides its hint."""
    url = pg_database.fresh_schema()
    heard: asyncio.Queue[Hint] = asyncio.Queue()
    listener = await asyncpg.connect(url)
    await listener.add_listener(CHANNEL, heard_by(heard))
    try:
        async with started(url, origin="feedfacefeedface") as store:
            await users(store, "alice", "bob", "carol", "dave")
            await store.submit("open_session", "bob", "feedfacefeedface", 1, 0)
            await store.submit("open_session", "carol", "0123456789abcdef", 1, 0)
            await asyncio.gather(*(send_chat(store, "alice", to, n) for n, to in
                                   enumerate(["bob", "carol", "dave", "bob"])))  # fmt: skip
            await send_chat(store, "alice", "carol", 4)  # the next batch
            hints = [await heard.get() for _n in range(2)]
            end = SEAL.seal(Hint(HintKind.QUEUED, "end", "feedfacefeedface"))
            await listener.execute("SELECT pg_notify($1, $2)", CHANNEL, end)
            assert (await heard.get()).handle == "end"  # nothing else was heard
    finally:
        await listener.close()
    assert [(h.kind, h.handle) for h in hints] == [
        (HintKind.ENVELOPE, "carol"), (HintKind.ENVELOPE, "carol")
    ]  # fmt: skip


async def _migrated(pg_database: PostgresDatabase) -> str:
    """A fresh database with the relay's schema and nothing else in it: its URL."""
    url = pg_database.fresh_schema()
    async with started(url):
        pass
    return url


async def test_a_plan_cached_while_the_queue_was_empty_still_finds_rows_by_key(
    pg_database: PostgresDatabase,
) -> None:
    """The store's connections plan keyed look-ups only (``store.PLANNER_SETTINGS``): a
    generic plan made on an empty, never analysed queue — the ACK's shape — stays an index
    look-up once the queue holds thousands of rows, not a hash join over all of them."""
    conn = await connect(await _migrated(pg_database))
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(
            "PREPARE ack(text[], bigint[]) AS DELETE FROM queue q USING unnest($1, $2)"
            " AS a(h, id) WHERE q.delivery_id = a.id AND q.recipient = a.h"
        )
        await conn.execute("EXPLAIN EXECUTE ack('{r1}', '{1}')")  # planned and cached now
        await conn.execute(
            "INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, sent_at, body)"
            " SELECT 'r' || i % 50, 's', 'user', '\\x00', 'chat', i, '\\x00'"
            " FROM generate_series(1, 5000) AS i"
        )
        plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN EXECUTE ack('{r1}', '{1}')"))
    finally:
        await conn.close()
    assert "Index Scan" in plan and "Seq Scan" not in plan, plan


def _relations(plan: Any) -> list[tuple[str, str, str]]:
    """(node type, operation, relation) of every node of an ``EXPLAIN (FORMAT JSON)`` plan."""
    found = []
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        found.append((node["Node Type"], node.get("Operation", ""), node.get("Relation Name", "")))
        stack.extend(node.get("Plans", ()))
    return found


async def test_a_send_run_reads_nothing_of_the_queue_whatever_the_plan(
    pg_database: PostgresDatabase,
) -> None:
    """A run of SENDs only inserts into ``queue``; ``previous`` comes from
    ``queue_counts.last_id`` (schema 10). Before, it was ``max(delivery_id)`` over the
    queue, and under a bitmap plan that max visited every row the ACKs had left dead since
    the last vacuum, per recipient and batch: the soak's p99 went to seconds at 2,200
    msg/s (docs/latency.md). Checked with index scans off, so a read would show."""
    conn = await connect(await _migrated(pg_database))
    try:
        await conn.execute("SET enable_indexscan = off; SET enable_indexonlyscan = off")
        nodes = []
        for statement in (sends.SEND_STATE, sends.SEND_WRITE):
            prepared = await conn.prepare(f"EXPLAIN (FORMAT JSON) {statement}")
            empty = [[] if t.kind == "array" else None for t in prepared.get_parameters()]
            nodes += _relations(json.loads(await prepared.fetchval(*empty)))
    finally:
        await conn.close()
    on_queue = [node for node in nodes if node[2] == "queue"]
    assert on_queue == [("ModifyTable", "Insert", "queue")], nodes


async def test_previous_covers_every_envelope_queued_before_acknowledged_or_forwarded(
    pg_database: PostgresDatabase,
) -> None:
    """``previous`` on PostgreSQL is the highest delivery id ever queued for the recipient
    (``queue_counts.last_id``): also once those rows are acknowledged, and also when the
    row before is a consent statement forwarded to a business, which a SEND run never
    sees — were it left out, the outbox would push past a row it has not paged."""
    url = pg_database.fresh_schema()
    key = SigningKey.generate()
    async with started(url) as store:
        await store.submit("create_account", "bob", "user", bytes(key.verify_key), 0)
        await store.submit("create_account", "shop", "business", b"s" * 32, 0)
        await users(store, "alice")
        first = await send_chat(store, "alice", "bob", 1)
        assert first[2] == 0
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        store.call_many("acknowledge", ["bob", [first[0]]], lambda ok, v: acked.set_result(v))
        assert await acked == 1  # the row it deleted
        second = await send_chat(store, "alice", "bob", 2)
        assert second[2] == first[0] < second[0]  # the queue was empty; its last id was not
        statement = make_statement(
            "grant", signer="bob", signer_key=bytes(key.verify_key), target="shop",
            relay_key=b"r" * 32, now_ms=10, rng=os.urandom, categories=("utility",),
        )  # fmt: skip
        signed = statement.sign(lambda m: key.sign(m).signature)
        _purged, forwarded, _superseded = await store.submit(
            "apply_statement", "bob", signed, 10, limits.CONSENT_COOLDOWN_MS
        )
        assert forwarded is not None and forwarded[0] > second[0]
        to_shop = await send_chat(store, "bob", "shop", 3)
        assert to_shop[2] == forwarded[0] < to_shop[0]
