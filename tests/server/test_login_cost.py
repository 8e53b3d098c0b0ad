"""What a LOGIN costs the store, whatever the account's queue holds (operation
``login_counts``, SPEC §4.3-4.4; threat model T82).

WELCOME says how many envelopes wait (``queued``). Counted row by row, a login of an
account whose queue an accomplice filled to the cap (10,000 envelopes) read all of them
in the writer that commits every SEND: 2.4 ms with small envelopes, 12.5 ms with the
largest (their rows spread over the file), for a LOGIN that costs its sender a
signature — as fast as the source's connection rate allows (20 a second, 200 at once).
Counted in SQLite's VM steps and PostgreSQL's row statistics, not time."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg

from blindrelay.server.store import Account
from blindrelay.server.store.postgresql.operations import login_counts as pg_login_counts
from blindrelay.server.store.postgresql.tx import Tx
from blindrelay.server.store.sqlite.accountjobs import login_counts
from blindrelay.server.store.sqlite.commit import GroupCommitter
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

from ..pg import PostgresDatabase
from .pgstore_support import started, users

NOW = 1_800_000_000_000
TTL = 1_000_000
ALICE = Account("alice", "user", b"a" * 32)
BOB = Account("bob", "user", b"b" * 32)
SHOP = Account("shop", "business", b"s" * 32)


def test_a_login_counts_the_queue_without_reading_it(tmp_path: Path) -> None:
    """Steps the same with 30 envelopes queued as with 3,000 (the first login after the
    writer's start reads the queue once); the count is still exact: unexpired envelopes
    and forwarded statements, not expired ones."""
    tables = Tables(connect(tmp_path / "r.db"))
    writer = GroupCommitter(tables)

    def accounts(store: Tables) -> None:
        for account in (ALICE, BOB, SHOP):
            store.accounts.create(account, 0)

    assert all(ok for ok, _ in writer.commit([accounts]))
    steps: dict[int, int] = {}
    queued = 0
    for size in (30, 3000):

        def queue_more(store: Tables, first: int = queued, last: int = size) -> None:
            for n in range(first, last):
                at = NOW - 2 * TTL if n < 5 else NOW  # five expired, not purged yet
                store.queue.add("shop", BOB, os.urandom(16), "chat", None, None, b"x", b"d",
                                at, 100_000)  # fmt: skip
            store.queue.enqueue_statement("shop", ALICE, os.urandom(16), b"signed", NOW)

        assert all(ok for ok, _ in writer.commit([queue_more]))
        queued = size
        login_counts(tables, "shop", NOW - TTL)  # the writer's first look, after its start
        ran = [0]

        def step(ran: list[int] = ran) -> int:
            ran[0] += 1
            return 0

        tables.db.conn.set_progress_handler(step, 1)
        counts = login_counts(tables, "shop", NOW - TTL)
        tables.db.conn.set_progress_handler(None, 1)
        statements = 1 if size == 30 else 2
        assert counts[0] == size - 5 + statements, counts
        steps[size] = ran[0]
    assert steps[3000] <= 2 * steps[30], steps


def test_a_login_on_postgresql_reads_no_queue_row_of_its_envelopes(
    pg_database: PostgresDatabase,
) -> None:
    """The same on PostgreSQL: ``login_counts`` of an account with 2,000 envelopes queued
    (five expired) and one statement fetches a handful of queue rows, by the transaction's
    own statistics (``pg_stat_xact_user_tables``), and counts them all the same."""

    async def run() -> tuple[list[object], int]:
        async with started(pg_database.url) as store:
            await users(store, "alice", "bob")
            await store.submit("create_account", "shop", "business", b"s" * 32, 0)
        conn = await asyncpg.connect(pg_database.url)
        try:
            await conn.execute(
                "INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, sent_at,"
                " body) SELECT 'shop', 'bob', 'user', sha256(n::text::bytea), 'chat',"
                " CASE WHEN n < 5 THEN $1::bigint - $2::bigint * 2 ELSE $1::bigint END, 'x'"
                " FROM generate_series(0, 1999) AS n",
                NOW, TTL,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, sent_at,"
                " body) VALUES ('shop', 'alice', 'user', 'nonce', 'statement', $1, 'signed')",
                NOW,
            )
            await conn.execute("UPDATE queue_counts SET queued = 2000 WHERE handle = 'shop'")
            await conn.execute("ANALYZE queue")  # as autovacuum does: the rows are known
            async with conn.transaction():
                counts = await pg_login_counts(Tx(conn, "test"), "shop", NOW - TTL)
                fetched = await conn.fetchval(
                    "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
                    " FROM pg_stat_xact_user_tables WHERE relname = 'queue'"
                )
            return counts, int(fetched)
        finally:
            await conn.close()

    counts, fetched = asyncio.run(run())
    assert counts[0] == 2000 - 5 + 1, counts
    assert fetched <= 20, fetched
