"""Tests' bridge between the back ends: a SQLite relay database copied into PostgreSQL.

So one scenario, played against a real relay, gives both back ends the same data and a
test can compare what the operator's commands say about each (``blindrelay inspect``
must report the same lines). Every column the two schemas share is copied, converted to
the PostgreSQL type (``text[]`` from SQLite's comma-joined text, ``boolean`` from 0/1,
``bytea`` from blobs); identities keep their values (``OVERRIDING SYSTEM VALUE``);
``queue_counts`` and ``queue_acks``, which only PostgreSQL keeps, are computed from the
queue (every envelope counted as queued, none as acknowledged). The schema
is made by the back end's own migrations first.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from blindrelay.server.store.postgresql.schema import TABLES, migrate

DERIVED = {"queue_counts", "queue_acks"}
"""PostgreSQL-only tables computed from the copied rows."""
RUNNING = {"workers"}
"""PostgreSQL-only tables of the workers running now (their peer links): nothing to copy."""
SEQUENCES = (("queue", "delivery_id"), ("statements", "seq"), ("one_time_prekeys", "seq"))
"""Columns whose values are drawn from a sequence and copied as they were."""


def _convert(value: Any, pg_type: str) -> Any:
    if value is None:
        return None
    if pg_type == "ARRAY":
        return value.split(",")
    if pg_type == "boolean":
        return bool(value)
    if pg_type == "bytea":
        return bytes(value)
    return value


async def _copy(source: sqlite3.Connection, conn: Any, url: str) -> None:
    await migrate(conn, url)
    async with conn.transaction():
        for table in TABLES:  # in the order their references need
            if table in DERIVED or table in RUNNING:
                continue
            columns = await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = $1",
                table,
            )
            pg_types = {name: kind for name, kind in columns}
            sqlite_columns = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
            shared = [name for name in sqlite_columns if name in pg_types]
            assert shared, f"{table}: no column in common"
            rows = source.execute(f"SELECT {', '.join(shared)} FROM {table}").fetchall()
            marks = ", ".join(f"${i}" for i in range(1, len(shared) + 1))
            await conn.executemany(
                f"INSERT INTO {table} ({', '.join(shared)}) OVERRIDING SYSTEM VALUE"
                f" VALUES ({marks})",
                [
                    [_convert(v, pg_types[c]) for v, c in zip(row, shared, strict=True)]
                    for row in rows
                ],
            )
        await conn.execute(
            "INSERT INTO queue_counts (handle, queued, last_id) SELECT a.handle,"
            " (SELECT count(*) FROM queue q WHERE q.recipient = a.handle"
            " AND q.intent <> 'statement'),"
            " (SELECT coalesce(max(delivery_id), 0) FROM queue q WHERE q.recipient = a.handle)"
            " FROM accounts a"
        )
        await conn.execute("INSERT INTO queue_acks (handle) SELECT handle FROM accounts")
        for table, column in SEQUENCES:  # later inserts continue after the copied ids
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                f" (SELECT coalesce(max({column}), 0) + 1 FROM {table}), false)"
            )


def copy_to_postgres(sqlite_path: Path, url: str) -> None:
    """Create the relay schema in the (empty) database at ``url`` and copy into it every
    row of the SQLite relay database at ``sqlite_path``."""

    async def run() -> None:
        source = sqlite3.connect(sqlite_path.resolve().as_uri() + "?mode=ro", uri=True)
        conn = await asyncpg.connect(url)
        try:
            await _copy(source, conn, url)
        finally:
            await conn.close()
            source.close()

    asyncio.run(run())


def reset(url: str) -> None:
    """Empty the database at ``url`` (its ``public`` schema dropped and made again), for
    a test that needs a fresh one inside a module's database."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await conn.close()

    asyncio.run(run())
