"""Monthly bills in the PostgreSQL back end (SPEC §8.5): tables and operations.

The tables and the chunked closing are the SQLite back end's (``..sqlite.bills``
says what each holds);
``batch`` writes ``bill_notifications`` in the statement that writes the envelopes.
What several workers sharing the database add: closing takes the log's advisory lock
(``transparency.LOG_LOCK``) first, before it reads which bills are open, so two
workers never close one bill twice, and the bill's entry is appended under the lock
it already holds.

Not here: when bills close (the relay's timer), building a bill (``..transparency``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from blindrelay.protocol.errors import NotFound
from blindrelay.protocol.transparency.bills import SentNotification

from .. import transparency
from . import transparency as log

SCHEMA = """
CREATE TABLE bill_notifications (
    month text NOT NULL,
    business text NOT NULL,
    at bigint NOT NULL,
    msg_id bytea NOT NULL,
    category text NOT NULL,
    recipient text NOT NULL,
    PRIMARY KEY (month, business, at, msg_id)
);
CREATE TABLE bills (
    business text NOT NULL,
    month text NOT NULL,
    salt bytea NOT NULL,
    count bigint NOT NULL,
    edge bytea NOT NULL,
    seq bigint,
    PRIMARY KEY (business, month)
);
CREATE TABLE bill_items (
    business text NOT NULL,
    month text NOT NULL,
    idx bigint NOT NULL,
    item bytea NOT NULL,
    PRIMARY KEY (business, month, idx)
);
"""
"""Schema 8 (``schema.MIGRATIONS``)."""

TABLES = ("bill_notifications", "bills", "bill_items")


async def closed(conn: Any, business: str, month: str) -> tuple[bytes, int, int] | None:
    """(salt, count, log index) of a closed bill."""
    row = await conn.fetchrow(
        "SELECT salt, count, seq FROM bills WHERE business = $1 AND month = $2"
        " AND seq IS NOT NULL",
        business, month,
    )  # fmt: skip
    return None if row is None else (bytes(row[0]), int(row[1]), int(row[2]))


async def items(conn: Any, business: str, month: str, start: int, limit: int) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT item FROM bill_items WHERE business = $1 AND month = $2 AND idx >= $3"
        " ORDER BY idx LIMIT $4",
        business, month, start, limit,
    )  # fmt: skip
    return [bytes(row[0]) for row in rows]


# --- the operations of ..operations.CONTRACT (called with the batch's Tx) ------------


async def close_bills(tx: Any, before: str, now: int) -> list[Any]:
    """As ``..sqlite.logjobs.close_bills``, under the log's lock (module docstring)."""
    conn = tx.conn
    await conn.execute("SELECT pg_advisory_xact_lock($1)", log.LOG_LOCK)
    budget = transparency.BILL_CHUNK_ITEMS
    done: list[list[Any]] = []
    while budget > 0:
        row = await conn.fetchrow(
            "SELECT business, month, salt, count, edge FROM bills WHERE seq IS NULL LIMIT 1"
        )
        if row is None:
            following = await conn.fetchrow(
                "SELECT month, business FROM bill_notifications WHERE month < $1"
                " ORDER BY month, business LIMIT 1",
                before,
            )
            if following is None:
                return [done, False]
            month, business = following
            if await closed(conn, business, month) is not None:
                late = await conn.fetchval(
                    "WITH d AS (DELETE FROM bill_notifications WHERE month = $1"
                    " AND business = $2 RETURNING 1) SELECT count(*) FROM d",
                    month, business,
                )  # fmt: skip
                done.append([business, month, int(late), None])
                continue
            progress = transparency.new_bill()
            await conn.execute(
                "INSERT INTO bills (business, month, salt, count, edge) VALUES ($1, $2, $3, 0, $4)",
                business, month, progress.salt, progress.edge,
            )  # fmt: skip
        else:
            business, month = row[0], row[1]
            progress = transparency.BillProgress(bytes(row[2]), int(row[3]), bytes(row[4]))
        rows = await conn.fetch(
            "SELECT msg_id, recipient, category, at FROM bill_notifications"
            " WHERE month = $1 AND business = $2 ORDER BY at, msg_id LIMIT $3",
            month, business, budget + 1,
        )  # fmt: skip
        taken = [SentNotification(bytes(r[0]), r[1], r[2], int(r[3])) for r in rows[:budget]]
        first = progress.count
        progress, made = transparency.bill_chunk(progress, taken)
        await conn.execute(
            "INSERT INTO bill_items (business, month, idx, item)"
            " SELECT $1, $2, * FROM unnest($3::bigint[], $4::bytea[])",
            business, month, list(range(first, progress.count)), made,
        )  # fmt: skip
        if taken:
            await conn.execute(
                "DELETE FROM bill_notifications WHERE month = $1 AND business = $2"
                " AND (at, msg_id) <= ($3, $4)",
                month, business, taken[-1].at, taken[-1].msg_id,
            )  # fmt: skip
        await conn.execute(
            "UPDATE bills SET count = $3, edge = $4 WHERE business = $1 AND month = $2",
            business, month, progress.count, progress.edge,
        )  # fmt: skip
        budget -= len(taken)
        if len(rows) > len(taken):
            return [done, True]
        seq = await log.append(conn, [transparency.bill_entry(business, month, progress, now)])
        await conn.execute(
            "UPDATE bills SET seq = $3 WHERE business = $1 AND month = $2", business, month, seq
        )
        done.append([business, month, progress.count, seq])
    return [done, True]


async def page(conn: Any, handle: str, month: str, start: int, limit: int) -> list[Any]:
    """[entry, index, proof, signed head, salt, items from ``start``]; NotFound (601)
    unless a bill is closed and a signed head covers it."""
    found = await closed(conn, handle, month)
    head = transparency.check_bill_covered(
        await log.newest_head(conn), None if found is None else found[2]
    )
    assert found is not None
    salt, _count, seq = found
    entry = await conn.fetchval("SELECT data FROM log_entries WHERE seq = $1", seq)
    proof = await log.inclusion(conn, seq, head.size)
    page_items = await items(conn, handle, month, start, limit)
    return [bytes(entry), seq, proof, head.signed, salt, page_items]


async def whole(conn: Any, handle: str, month: str) -> list[Any] | None:
    """The bill with every item, for the operator; None where ``page`` gives 601."""
    try:
        return await page(conn, handle, month, 0, transparency.MAX_BILL_ITEMS_WHOLE)
    except NotFound:
        return None


async def bill_page(tx: Any, handle: str, month: str, start: int, limit: int) -> list[Any]:
    return await page(tx.conn, handle, month, start, limit)


OPERATIONS: dict[str, Callable[..., Awaitable[Any]]] = {
    f.__name__: f for f in (close_bills, bill_page)
}
WRITES = frozenset({"close_bills"})
