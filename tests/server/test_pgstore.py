"""server/store/postgresql/: the PostgreSQL back end on a real server (tests/pg.py).

What only this back end has: versioned migrations shared by workers, one stream of
group-committed batches per worker with set-based SENDs, ACKs and PAGEs, hints emitted
inside the transaction, atomic prekey claims and delivery-id order across workers, and
outages answered with STORE_UNAVAILABLE while it reconnects. What both back ends share
is tested on both (test_store_backends.py and the relay tests with ``BACKENDS``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import limits
from blindrelay.protocol.errors import InvalidProfile, QueueFull, StoreUnavailable
from blindrelay.protocol.signed import make_statement
from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.routing import CHANNEL, Hint, HintKind, HintSeal, hint_key
from blindrelay.server.store import Account, StoreJobError, StoreStartError, redact
from blindrelay.server.store.operations import CONTRACT, argument_names
from blindrelay.server.store.postgresql import batch, operations, schema, sends
from blindrelay.server.store.postgresql.store import (
    PostgresStore,
    connect,
    vacuum_problem,
)
from blindrelay.server.store.postgresql.tx import Tx
from blindrelay.server.store.rules import envelope_digest

from ..pg import PostgresDatabase
from .inmemory import log_lines

RULES = send_rules(RelayConfig())


def test_the_postgresql_back_end_implements_exactly_the_contracts_operations() -> None:
    assert sorted([*operations.OPERATIONS, *batch.ARGUMENTS]) == sorted(CONTRACT)
    for name, operation in CONTRACT.items():
        if name in batch.ARGUMENTS:
            if operation.merged:
                assert len(batch.ARGUMENTS[name]) == 1, name
            else:
                assert list(batch.ARGUMENTS[name]) == argument_names(operation), name
            continue
        parameters = list(inspect.signature(operations.OPERATIONS[name]).parameters.values())[1:]
        assert [p.name for p in parameters] == argument_names(operation), name
        optional = [p.name for p in parameters if p.default is not inspect.Parameter.empty]
        assert optional == [a.rstrip("?") for a in operation.args if a.endswith("?")], name


def test_a_url_is_shown_without_its_password() -> None:
    assert (
        redact("postgresql://relay:s3cret@db:5432/relay") == "postgresql://relay:***@db:5432/relay"
    )
    assert redact("postgresql://db/relay") == "postgresql://db/relay"


@pytest.mark.parametrize(
    ("url", "shown"),
    [("postgresql://db/relay?password=s3cret", "postgresql://db/relay?password=***"),
     ("postgresql://u@db/relay?sslmode=require&PASSWORD=s3cret",
      "postgresql://u@db/relay?sslmode=require&PASSWORD=***"),
     ("postgresql://u:pw@db/relay?sslpassword=s3cret&application_name=x",
      "postgresql://u:***@db/relay?sslpassword=***&application_name=x"),
     ("postgresql://db/relay?sslmode=require", "postgresql://db/relay?sslmode=require")],
)  # fmt: skip
def test_a_password_in_the_query_is_hidden_too(url: str, shown: str) -> None:
    """asyncpg and libpq take ``?password=`` as well as the user part's: it was logged in
    clear (``listening``, ``store_not_vacuumed``, start-up errors; found in review)."""
    assert redact(url) == shown


async def test_a_store_url_password_never_reaches_its_log_or_its_errors(
    pg_database: PostgresDatabase,
) -> None:
    canary = "canary-" + os.urandom(6).hex()
    url = pg_database.fresh_schema()
    store = PostgresStore(url + ("&" if "?" in url else "?") + f"password={canary}")
    assert canary not in store.location
    missing = PostgresStore(pg_database.url.rsplit("/", 1)[0] + f"/no_such_db?password={canary}")
    with pytest.raises(StoreStartError) as refused:
        await missing.start()
    assert canary not in str(refused.value) and "password=***" in str(refused.value)


SEAL = HintSeal(hint_key(b"\x07" * 32))
"""The hint seal of these tests' stores, as a relay sets its own (``routing``)."""


def heard_by(heard: asyncio.Queue[Hint]) -> Callable[..., None]:
    """A LISTEN callback that opens each sealed hint into ``heard``."""
    return lambda *args: heard.put_nowait(SEAL.open(args[3]))


@asynccontextmanager
async def started(url: str, **kwargs: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, **kwargs)
    store.hint_seal = SEAL
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def _users(store: PostgresStore, *handles: str) -> None:
    for handle in handles:
        await store.submit("create_account", handle, "user", handle.encode().ljust(32, b"."), 0)


def _send(
    store: PostgresStore, sender: str, to: str, n: int, **changes: Any
) -> asyncio.Future[Any]:
    rules = RULES._replace(**{"message_request_max": 10**6, **changes})
    msg_id = n.to_bytes(16, "big")
    return store.submit("send", sender, "user", to, msg_id, "chat", None, None, b"x", 5, rules)


# --- migrations ---------------------------------------------------------------------


async def _account(store: PostgresStore, handle: str) -> Account | None:
    """The loop's read of an account, awaited."""
    answer: asyncio.Future[Account | None] = asyncio.get_running_loop().create_future()
    store.read("account", [handle], lambda ok, value: answer.set_result(value))
    return await answer


async def test_a_fresh_database_is_migrated_once_and_a_restart_keeps_its_data(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    async with started(url) as first, started(url) as second:  # two workers at once
        await _users(first, "alice")
        assert await _account(second, "alice") is not None
    async with started(url) as again:
        assert await _account(again, "alice") is not None
        assert again.location == f"{url} (PostgreSQL)"
    conn = await asyncpg.connect(url)
    try:
        versions = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
        assert [row[0] for row in versions] == list(range(1, schema.SCHEMA_VERSION + 1))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("autovacuum", "track_counts", "named"),
    [("on", "on", None), ("off", "on", "autovacuum off"), ("on", "off", "track_counts off"),
     ("off", "off", "autovacuum and track_counts off")],
)  # fmt: skip
async def test_a_server_that_would_not_vacuum_the_queue_is_named(
    autovacuum: str, track_counts: str, named: str | None
) -> None:
    class Settings:
        async def fetchrow(self, sql: str) -> tuple[str, str]:
            assert "current_setting('autovacuum')" in sql
            return autovacuum, track_counts

    problem = await vacuum_problem(Settings())
    if named is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(named) and "\n" not in problem
        assert "ALTER SYSTEM SET" in problem


async def test_a_relay_on_a_server_that_does_not_vacuum_says_so_at_start(
    pg_database: PostgresDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """Whichever this server is: the warning is logged exactly when it does not vacuum."""
    url = pg_database.fresh_schema()
    conn = await asyncpg.connect(url)
    try:
        settings = tuple(
            await conn.fetchrow(
                "SELECT current_setting('autovacuum'), current_setting('track_counts')"
            )
        )
    finally:
        await conn.close()
    with caplog.at_level(logging.WARNING, logger="blindrelay"):
        async with started(url):
            pass
    warned = [line for line in log_lines(caplog) if line["event"] == "store_not_vacuumed"]
    assert len(warned) == (0 if settings == ("on", "on") else 1)


async def test_a_database_newer_than_the_code_is_refused_in_one_line(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    async with started(url):
        pass
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO schema_version (version) VALUES ($1)", schema.SCHEMA_VERSION + 1
        )
    finally:
        await conn.close()
    store = PostgresStore(url)
    with pytest.raises(StoreStartError) as refused:
        await store.start()
    message = str(refused.value)
    assert "newer than this relay's" in message and "\n" not in message
    assert not store.running


async def test_an_unreachable_server_fails_to_start_in_one_line() -> None:
    store = PostgresStore("postgresql://relay:secret@127.0.0.1:1/relay")
    with pytest.raises(StoreStartError) as refused:
        await store.start()
    assert "127.0.0.1:1" in str(refused.value) and "secret" not in str(refused.value)


# --- batches --------------------------------------------------------------------------


async def test_a_loop_turn_is_one_transaction_answered_in_submission_order(
    pg_database: PostgresDatabase,
) -> None:
    async with started(pg_database.fresh_schema()) as store:
        await _users(store, "alice", "bob", "carol")
        commits = store.counters.commits
        order: list[int] = []
        futures = []
        for n in range(30):
            future = _send(store, "alice", "bob" if n % 3 else "carol", n, queue_cap=15)
            future.add_done_callback(lambda _f, n=n: order.append(n))
            futures.append(future)
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert store.counters.commits == commits + 1
        assert order == list(range(30))
        bob = [r for n, r in enumerate(results) if n % 3]
        assert all(isinstance(r, list) for r in bob[:15])
        assert all(isinstance(r, QueueFull) for r in bob[15:])  # the cap, in order
        ids = [r[0] for r in results if isinstance(r, list)]
        assert ids == sorted(ids)
        previous = {0}
        for result in bob[:15]:  # each names the one before it to the same recipient
            assert result[2] == max(previous)
            previous.add(result[0])


async def test_an_operation_failing_unexpectedly_fails_alone(pg_database: PostgresDatabase) -> None:
    """A PostgreSQL error inside a set-based statement: the batch runs again, every call
    alone, and only the failing one fails."""
    async with started(pg_database.fresh_schema()) as store:
        await _users(store, "alice", "bob")
        sent = _send(store, "alice", "bob", 1)
        broken = store.submit("page", "bob", 0, -1, 0)  # LIMIT -1: an error in PostgreSQL
        paged = store.submit("page", "bob", 0, 10, 0)
        results = await asyncio.gather(sent, broken, paged, return_exceptions=True)
        assert isinstance(results[0], list)
        assert isinstance(results[1], StoreJobError)
        assert [row[0] for row in results[2][0]] == [results[0][0]]
        assert store.counters.replays == 1
        assert (await store.submit("login_counts", "bob", 0))[0] == 1  # stored once


async def test_a_careful_rerun_sends_every_hint_of_the_calls_that_succeed_once_in_order(
    pg_database: PostgresDatabase,
) -> None:
    """When a batch is rolled back and run again carefully, what its calls emitted goes
    out once, in order."""
    url = pg_database.fresh_schema()
    heard: asyncio.Queue[Hint] = asyncio.Queue()
    listener = await asyncpg.connect(url)
    await listener.add_listener(CHANNEL, heard_by(heard))
    try:
        async with started(url, origin="feedfacefeedface") as store:
            await _users(store, "alice", "bob")
            await store.submit("open_session", "bob", "0123456789abcdef", 1, 0)  # elsewhere
            login = store.submit("login_counts", "bob", 0)
            sent = _send(store, "alice", "bob", 1)
            broken = store.submit("page", "bob", 0, -1, 0)  # fails the batch's first run
            last = store.submit("login_counts", "alice", 0)
            results = await asyncio.gather(login, sent, broken, last, return_exceptions=True)
            assert isinstance(results[2], StoreJobError) and store.counters.replays == 1
            await store.submit("login_counts", "bob", 0)  # the next batch
            hints = [await heard.get() for _n in range(4)]
    finally:
        await listener.close()
    assert [(h.kind, h.handle, h.value) for h in hints] == [
        (HintKind.LOGIN, "bob", 1), (HintKind.ENVELOPE, "bob", 0), (HintKind.LOGIN, "alice", 1),
        (HintKind.LOGIN, "bob", 2),
    ]  # fmt: skip


async def test_merged_acks_count_per_item_and_a_malformed_one_fails_its_call(
    pg_database: PostgresDatabase,
) -> None:
    async with started(pg_database.fresh_schema()) as store:
        await _users(store, "alice", "bob")
        first, second = [(await _send(store, "alice", "bob", n))[0] for n in (1, 2)]
        outcomes: list[tuple[str, bool, object]] = []
        store.call_many(
            "acknowledge", ["bob", [first, 999]], lambda ok, v: outcomes.append(("a", ok, v))
        )
        store.call_many(
            "acknowledge", ["bob", [first, second]], lambda ok, v: outcomes.append(("b", ok, v))
        )
        store.call_many(
            "acknowledge", ["alice", [second]], lambda ok, v: outcomes.append(("c", ok, v))
        )
        await store.submit("noop")
        assert outcomes == [("a", True, 1), ("b", True, 1), ("c", True, 0)]
        outcomes.clear()
        store.call_many("acknowledge", ["bob", 7], lambda ok, v: outcomes.append(("d", ok, v)))
        await store.submit("noop")
        assert [(name, ok) for name, ok, _ in outcomes] == [("d", False)]


async def test_reads_are_operations_of_the_stream(pg_database: PostgresDatabase) -> None:
    """``read`` sees every call made before it, and writes nothing."""
    async with started(pg_database.fresh_schema()) as store:
        answers: list[object] = []
        store.call("create_account", ("alice", "user", b"k" * 32, 0), lambda ok, v: None)
        store.read("account", ["alice"], lambda ok, v: answers.append(v))
        store.read("account_for_login", ["alice"], lambda ok, v: answers.append(v))
        store.read("account_for_login", ["nobody"], lambda ok, v: answers.append(v))
        store.call(
            "upload_prekeys",
            ("alice", b"k" * 32, None, [[1, b"p" * 32]], 10, 0),
            lambda ok, v: None,
        )
        store.read("check_prekey_upload", ["alice", [1], 10], lambda ok, v: answers.append(ok))
        store.read("check_prekey_upload", ["alice", [2], 10], lambda ok, v: answers.append(ok))
        await store.submit("noop")
        alice = Account("alice", "user", b"k" * 32)
        assert answers == [alice, alice, None, False, True]


# --- across workers ---------------------------------------------------------------------


async def _counts(url: str, handle: str) -> tuple[int, int]:
    """(envelopes queued as the cap counts them, rows in the queue) for ``handle``."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT queued FROM queue_counts WHERE handle = $1)"
            " - (SELECT acked FROM queue_acks WHERE handle = $1),"
            " (SELECT count(*) FROM queue WHERE recipient = $1 AND intent <> 'statement')",
            handle,
        )
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def test_an_ack_takes_no_lock_its_recipients_senders_wait_for(
    pg_database: PostgresDatabase,
) -> None:
    """An ACK only deletes what was pushed and counts it apart (``queue_acks``): the
    recipient's worker does not wait for a worker that holds the recipient's lock — a
    batch of SENDs to it — nor that one for the ACK's commit."""
    url = pg_database.fresh_schema()
    async with started(url) as store:
        await _users(store, "alice", "bob")
        first, _, _ = await _send(store, "alice", "bob", 1)
        holder = await asyncpg.connect(url)
        try:
            async with holder.transaction():  # another worker's batch sending to bob
                await holder.execute("SELECT 1 FROM queue_counts WHERE handle = 'bob' FOR UPDATE")
                acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                store.call_many("acknowledge", ["bob", [first]], lambda ok, v: acked.set_result(v))
                assert await asyncio.wait_for(acked, 30) == 1
        finally:
            await holder.close()
        assert await _counts(url, "bob") == (0, 0)


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
        await _users(store, "alice", "bob")
        first, second = [(await _send(store, "alice", "bob", n))[0] for n in (1, 2)]
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
        await _users(sender, "alice", "bob")
        ids = [(await _send(sender, "alice", "bob", n, queue_cap=2))[0] for n in (1, 2)]
        with pytest.raises(QueueFull):
            await _send(sender, "alice", "bob", 3, queue_cap=2)
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        recipient.call_many("acknowledge", ["bob", ids[:1]], lambda ok, v: acked.set_result(v))
        assert await acked == 1
        assert await _counts(url, "bob") == (1, 1)
        await _send(sender, "alice", "bob", 3, queue_cap=2)
        with pytest.raises(QueueFull):
            await _send(sender, "alice", "bob", 4, queue_cap=2)
        assert await _counts(url, "bob") == (2, 2)


async def _schema_left_by(conn: Any, version: int) -> None:
    """The tables a relay of schema ``version`` left: its migrations, recorded as applied."""
    await conn.execute(
        "CREATE TABLE schema_version (version integer PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for applied in range(1, version + 1):
        await conn.execute(schema.MIGRATIONS[applied])
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", applied)


async def test_an_upgrade_to_schema_3_keeps_every_accounts_queue_count(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await _schema_left_by(conn, 2)
            await conn.execute(
                "INSERT INTO accounts (handle, kind, identity_key, created_at) VALUES"
                " ('alice', 'user', '\\x00', 0), ('bob', 'user', '\\x00', 0);"
                " INSERT INTO queue_counts (handle, queued) VALUES ('alice', 0), ('bob', 1);"
                " INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, sent_at, body)"
                " VALUES ('bob', 'alice', 'user', '\\x01', 'chat', 5, '\\x02')"
            )
    finally:
        await conn.close()
    async with started(url) as store:
        assert await _counts(url, "bob") == (1, 1)
        with pytest.raises(QueueFull):
            await _send(store, "alice", "bob", 2, queue_cap=1)
        [[delivery_id, *_]], _high = await store.submit("page", "bob", 0, 10, 0)
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        store.call_many("acknowledge", ["bob", [delivery_id]], lambda ok, v: acked.set_result(v))
        assert await acked == 1
        await _send(store, "alice", "bob", 2, queue_cap=1)
        assert await _counts(url, "bob") == (1, 1)


async def test_an_upgrade_to_schema_9_keys_sent_by_msg_id_and_keeps_what_it_remembers(
    pg_database: PostgresDatabase,
) -> None:
    """Schema 9: ``sent`` keyed ``(msg_id, sender)``, as SQLite's; a SEND remembered
    before the upgrade is still answered as a resend with its original time (§6.3.2)."""
    url = pg_database.fresh_schema()
    msg_id = (7).to_bytes(16, "big")  # what _send(…, 7) sends
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await _schema_left_by(conn, 8)
            await conn.execute(
                "INSERT INTO sent (sender, msg_id, digest, at) VALUES ('alice', $1, $2, 3)",
                msg_id, envelope_digest("bob", "chat", None, None, b"x"),
            )  # fmt: skip
    finally:
        await conn.close()
    async with started(url) as store:
        await _users(store, "alice", "bob")
        assert await _send(store, "alice", "bob", 7) == 3  # the resend's original time
    conn = await asyncpg.connect(url)
    try:
        assert await schema.schema_version(conn) == schema.SCHEMA_VERSION
        key = await conn.fetch(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'sent'::regclass"
            " AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)"
        )
    finally:
        await conn.close()
    assert [row["attname"] for row in key] == ["msg_id", "sender"]


async def test_two_workers_never_hand_out_one_one_time_prekey_twice(
    pg_database: PostgresDatabase,
) -> None:
    """2 workers × 50 concurrent bundle fetches of one owner holding 10,000 one-time
    prekeys: every fetch gets a key, and no key is issued twice."""
    url = pg_database.fresh_schema()
    async with started(url) as a, started(url) as b:
        await _users(a, "owner", *(f"r{n}" for n in range(100)))
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
        await _users(a, "bob", *(f"s{n}" for n in range(8)))
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
                await _send(store, sender, "bob", n)

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
            await _users(store, "alice", "bob", "owner")
            await store.submit("open_session", "bob", "0123456789abcdef", 1, 0)  # elsewhere
            assert heard.empty()  # registering changes nothing another worker acts on
            delivery_id, _, previous = await _send(store, "alice", "bob", 1)
            carried = await heard.get()  # the envelope rides its hint
            assert (carried.kind, carried.handle, carried.origin, carried.value) == (
                HintKind.ENVELOPE, "bob", "feedfacefeedface", previous
            )
            msg_id = (1).to_bytes(16, "big")
            assert carried.row() == [
                delivery_id, "bob", "alice", "user", msg_id, "chat", None, None, 5, b"x"
            ]
            with pytest.raises(QueueFull):
                await _send(store, "alice", "bob", 2, queue_cap=1)  # refused: no hint
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
            await _users(store, "alice", "bob", "carol", "dave")
            await store.submit("open_session", "bob", "feedfacefeedface", 1, 0)
            await store.submit("open_session", "carol", "0123456789abcdef", 1, 0)
            await asyncio.gather(*(_send(store, "alice", to, n) for n, to in
                                   enumerate(["bob", "carol", "dave", "bob"])))  # fmt: skip
            await _send(store, "alice", "carol", 4)  # the next batch
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
        await _users(store, "alice")
        first = await _send(store, "alice", "bob", 1)
        assert first[2] == 0
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        store.call_many("acknowledge", ["bob", [first[0]]], lambda ok, v: acked.set_result(v))
        assert await acked == 1  # the row it deleted
        second = await _send(store, "alice", "bob", 2)
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
        to_shop = await _send(store, "bob", "shop", 3)
        assert to_shop[2] == forwarded[0] < to_shop[0]


async def test_an_upgrade_to_schema_13_lists_no_business_a_block_of_a_handle_nobody_held(
    pg_database: PostgresDatabase,
) -> None:
    """Schema 13 (SPEC §7.6, threat model T47), as SQLite's 14: a statement in force about
    a target that is no business at the upgrade (none was forwarded: accounts are neither
    deleted nor change kind) is listed to no one but its signer, even if the handle is
    registered later; one about an existing business keeps being listed to it. So does
    the unblock that lifts each: it goes where its block went (SPEC §7.5)."""
    url = pg_database.fresh_schema()
    key = SigningKey.generate()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await _schema_left_by(conn, 12)
            await conn.execute(
                "INSERT INTO accounts (handle, kind, identity_key, created_at) VALUES"
                " ('bob', 'user', $1::bytea, 0), ('carol', 'user', '\\x02', 0),"
                " ('shop', 'business', '\\x03', 0)",
                bytes(key.verify_key),
            )
            await conn.execute(
                "INSERT INTO pairs (low, high, consent, pending, window_until, blockers)"
                " VALUES ('bob', 'ghost', '{}', '', 0, 'bob'), ('bob', 'shop', '{}', '', 0, 'bob');"
                " INSERT INTO queue_counts (handle) VALUES ('bob'), ('carol'), ('shop');"
                " INSERT INTO statements (signer, target, action, issued_at, accepted_at, nonce,"
                "  signed) VALUES ('bob', 'ghost', 'block', 5, 7, '\\x01', '\\x01'),"
                "  ('bob', 'shop', 'block', 5, 7, '\\x02', '\\x02'),"
                "  ('bob', 'carol', 'block', 5, 7, '\\x03', '\\x03');"
                " INSERT INTO statements_in_force (signer, target, family, seq)"
                "  SELECT signer, target, 'block', seq FROM statements"
            )
    finally:
        await conn.close()
    async with started(url) as store:
        assert await store.submit("statements_in_force", "shop", 0, 10) == [[b"\x02"], None]
        await store.submit("create_account", "ghost", "business", b"g" * 32, 9)
        assert await store.submit("statements_in_force", "ghost", 0, 10) == [[], None]
        assert await store.submit("statements_in_force", "bob", 0, 10) == [
            [b"\x01", b"\x02", b"\x03"], None
        ]  # fmt: skip
        for target, goes in (("ghost", False), ("shop", True)):
            unblock = make_statement(
                "unblock", signer="bob", signer_key=bytes(key.verify_key), target=target,
                relay_key=b"r" * 32, now_ms=10, rng=os.urandom,
            ).sign(lambda m: key.sign(m).signature)  # fmt: skip
            cooldown = limits.CONSENT_COOLDOWN_MS
            forwarded = (await store.submit("apply_statement", "bob", unblock, 10, cooldown))[1]
            assert (forwarded is not None) is goes
            listed = await store.submit("statements_in_force", target, 0, 10)
            assert listed == [[unblock] if goes else [], None]
    conn = await asyncpg.connect(url)
    try:
        assert await schema.schema_version(conn) == schema.SCHEMA_VERSION
        flags = await conn.fetch("SELECT target, to_target FROM statements_in_force ORDER BY seq")
        default = await conn.fetchval(
            "SELECT column_default IS NULL FROM information_schema.columns WHERE table_schema ="
            " current_schema() AND table_name = 'statements_in_force' AND column_name = 'to_target'"
        )
    finally:
        await conn.close()
    assert [tuple(row) for row in flags] == [
        ("carol", False), ("ghost", False), ("shop", True),
    ]  # fmt: skip
    assert default is True  # no default: every writer says it


async def test_an_upgrade_to_schema_10_keeps_each_accounts_last_delivery_id(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    conn = await connect(url)
    try:
        await _schema_left_by(conn, 9)
        await conn.execute(
            "INSERT INTO accounts (handle, kind, identity_key, created_at) VALUES"
            " ('alice', 'user', '\\x00', 0), ('bob', 'user', '\\x01', 0);"
            " INSERT INTO queue_counts (handle, queued) VALUES ('alice', 0), ('bob', 2);"
            " INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, sent_at, body)"
            "  VALUES ('bob', 'alice', 'user', '\\x07', 'chat', 1, '\\x00'),"
            "  ('bob', 'alice', 'user', '\\x09', 'chat', 1, '\\x00')"
        )
        last = await conn.fetchval("SELECT max(delivery_id) FROM queue WHERE recipient = 'bob'")
    finally:
        await conn.close()
    async with started(url) as store:
        assert (await _send(store, "alice", "bob", 1))[2] == last
        assert (await _send(store, "bob", "alice", 2))[2] == 0


# --- outages ------------------------------------------------------------------------------


async def test_an_outage_answers_store_unavailable_and_the_store_comes_back(
    pg_database: PostgresDatabase,
) -> None:
    """The batch in flight when the connection dies, and every call until the store is
    back, get 902 (never a success); the store reconnects by itself and says so."""
    url = pg_database.fresh_schema()
    edges: list[bool] = []
    back = asyncio.Event()
    during: list[asyncio.Future[Any]] = []
    async with started(url) as store:
        await _users(store, "alice", "bob")

        def available(up: bool) -> None:
            edges.append(up)
            if up:
                back.set()
            else:  # called while the outage begins: this call must not succeed either
                during.append(store.submit("noop"))

        store.on_available = available
        holder = await asyncpg.connect(url)
        try:
            async with holder.transaction():
                await holder.execute("SELECT 1 FROM queue_counts WHERE handle = 'bob' FOR UPDATE")
                in_flight = _send(store, "alice", "bob", 1)  # waits for bob's row
                await _terminate_the_waiting_backend(url)
                with pytest.raises(StoreUnavailable) as unavailable:
                    await in_flight
                assert unavailable.value.retry_after_ms >= 1
                assert not store.available
        finally:
            await holder.close()
        with pytest.raises(StoreUnavailable):
            await during[0]
        await asyncio.wait_for(back.wait(), 10)
        assert edges == [False, True] and store.available and store.running
        assert isinstance(await _send(store, "alice", "bob", 2), list)
        assert (await store.submit("login_counts", "bob", 0))[0] == 1  # the cut-off one never was


async def _terminate_the_waiting_backend(url: str) -> None:
    """Kill the store's backend once its batch waits for the row lock the test holds (from
    a connection of its own: a transaction sees one snapshot of pg_stat_activity)."""
    watcher = await asyncpg.connect(url)
    try:
        for _attempt in range(1000):
            pid = await watcher.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND application_name = 'blindrelay'"
            )
            if pid is not None:
                assert await watcher.fetchval("SELECT pg_terminate_backend($1)", pid)
                return
            await asyncio.sleep(0.005)
    finally:
        await watcher.close()
    raise AssertionError("the store's batch never waited for the lock")


async def test_two_workers_creating_the_relay_key_at_once_end_with_one(
    pg_database: PostgresDatabase,
) -> None:
    """SPEC §4.1, CONTRACT create_relay_seed: "two relays starting at once must end with one
    key". The second insert waits for the first's commit; its statement's snapshot predates
    that commit, so a read in the same statement sees no row (it answered NULL, and the
    worker died with a TypeError)."""
    url = pg_database.fresh_schema()
    async with started(url) as store:
        first = await asyncpg.connect(url)
        try:
            async with first.transaction():
                await first.execute(
                    "INSERT INTO relay_identity (id, seed, public_key, created_at)"
                    " VALUES (1, $1, $2, 0)", b"a" * 32, b"A" * 32,
                )  # fmt: skip
                second = asyncio.ensure_future(
                    store.submit("create_relay_seed", b"b" * 32, b"B" * 32, 0)
                )
                waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                for _ in range(500):  # until the second insert waits on the first
                    if await first.fetchval(waiting):
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the second insert never waited")
            assert await asyncio.wait_for(second, 10) == b"a" * 32
        finally:
            await first.close()
