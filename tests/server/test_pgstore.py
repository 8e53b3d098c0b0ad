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
import logging
import os
from typing import Any

import asyncpg
import pytest

from blindrelay.protocol.errors import QueueFull, StoreUnavailable
from blindrelay.server.routing import CHANNEL, Hint, HintKind
from blindrelay.server.store import Account, StoreJobError, StoreStartError, redact
from blindrelay.server.store.operations import CONTRACT, argument_names
from blindrelay.server.store.postgresql import batch, operations, schema
from blindrelay.server.store.postgresql.store import (
    PostgresStore,
    vacuum_problem,
)

from ..pg import PostgresDatabase
from .inmemory import log_lines
from .pgstore_support import account_of, heard_by, send_chat, started, users


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


# --- migrations ---------------------------------------------------------------------


async def test_a_fresh_database_is_migrated_once_and_a_restart_keeps_its_data(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    async with started(url) as first, started(url) as second:  # two workers at once
        await users(first, "alice")
        assert await account_of(second, "alice") is not None
    async with started(url) as again:
        assert await account_of(again, "alice") is not None
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
        await users(store, "alice", "bob", "carol")
        commits = store.counters.commits
        order: list[int] = []
        futures = []
        for n in range(30):
            future = send_chat(store, "alice", "bob" if n % 3 else "carol", n, queue_cap=15)
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
        await users(store, "alice", "bob")
        sent = send_chat(store, "alice", "bob", 1)
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
            await users(store, "alice", "bob")
            await store.submit("open_session", "bob", "0123456789abcdef", 1, 0)  # elsewhere
            login = store.submit("login_counts", "bob", 0)
            sent = send_chat(store, "alice", "bob", 1)
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
        await users(store, "alice", "bob")
        first, second = [(await send_chat(store, "alice", "bob", n))[0] for n in (1, 2)]
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
        await users(store, "alice", "bob")

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
                in_flight = send_chat(store, "alice", "bob", 1)  # waits for bob's row
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
        assert isinstance(await send_chat(store, "alice", "bob", 2), list)
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
