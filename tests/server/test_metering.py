"""server/store/rules.py and sqlite/metering.py: the month a count goes to (SPEC §8.4: UTC
calendar months), and
counts written once per commit, in the transaction of what they count."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from blindrelay.protocol.consent import Meter
from blindrelay.protocol.errors import QueueFull
from blindrelay.protocol.transparency.bills import month_of, month_span
from blindrelay.server.store import Account
from blindrelay.server.store.postgresql.operations import usage_months
from blindrelay.server.store.sqlite.commit import GroupCommitter
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

from ..pg import PostgresDatabase
from .pgstore_support import started

times = st.integers(min_value=0, max_value=2**47)  # to the year 6429


@given(times)
def test_a_month_span_holds_its_time_and_is_exactly_one_utc_month(ms: int) -> None:
    start, end, month = month_span(ms)
    assert start <= ms < end
    assert month == month_of(ms) == month_of(start) == month_of(end - 1)
    assert month_of(start - 1) != month and month_of(end) != month


def test_month_spans_across_the_year_end() -> None:
    new_year_2024 = 1_704_067_200_000
    assert month_span(new_year_2024 - 1) == (1_701_388_800_000, new_year_2024, "2023-12")
    assert month_span(new_year_2024)[2] == "2024-01"


# --- counts are written once per commit -------------------------------------------

NOW = 1_800_000_000_000
MONTH = month_of(NOW)


def _count(store: Tables, business: str = "airline", category: str = "utility") -> None:
    store.usage.count(business, NOW, Meter.NOTIFICATION, category)


def _committed(path: Path) -> dict[tuple[str, str], int]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT business, category, count FROM usage").fetchall()
    finally:
        conn.close()
    return {(business, category): count for business, category, count in rows}


def test_a_batch_writes_its_counts_once_in_its_transaction(tmp_path: Path) -> None:
    writer = GroupCommitter(Tables(connect(tmp_path / "r.db")))
    statements: list[str] = []
    writer.tables.db.conn.set_trace_callback(statements.append)
    outcomes = writer.commit([_count] * 5 + [lambda store: _count(store, category="marketing")])
    assert all(ok for ok, _ in outcomes)
    assert _committed(tmp_path / "r.db") == {("airline", "utility"): 5, ("airline", "marketing"): 1}
    upserts = [sql for sql in statements if sql.startswith("INSERT INTO usage")]
    assert len(upserts) == 2  # one row each, in one executemany before COMMIT
    assert statements.index(upserts[-1]) < statements.index("COMMIT")
    writer.commit([_count])
    assert _committed(tmp_path / "r.db")[("airline", "utility")] == 6


def test_a_failed_job_takes_its_count_back(tmp_path: Path) -> None:
    writer = GroupCommitter(Tables(connect(tmp_path / "r.db")))

    def count_then_refuse(store: Tables) -> None:
        _count(store)
        raise QueueFull()

    def count_write_then_fail(store: Tables) -> None:
        _count(store)
        store.accounts.create(Account("carol", "user", b"c" * 32), NOW)
        raise QueueFull()

    outcomes = writer.commit([_count, count_then_refuse, count_write_then_fail, _count])
    assert [ok for ok, _ in outcomes] == [True, False, False, True]
    assert _committed(tmp_path / "r.db") == {("airline", "utility"): 2}


def test_a_read_sees_the_batchs_counts_and_a_failed_reader_loses_none(tmp_path: Path) -> None:
    """A USAGE_FETCH in the same batch as the notifications it counts sees them; a
    job that flushed and then failed is undone without dropping or doubling counts."""
    writer = GroupCommitter(Tables(connect(tmp_path / "r.db")))

    def read(store: Tables) -> dict[str, int]:
        return store.usage.month("airline", MONTH).notifications

    def read_then_fail(store: Tables) -> None:
        read(store)
        raise QueueFull()

    outcomes = writer.commit([_count, read, _count, read_then_fail, _count, read])
    assert [value for ok, value in outcomes if ok] == [
        None,
        {"utility": 1},
        None,
        None,
        {"utility": 3},
    ]
    assert _committed(tmp_path / "r.db") == {("airline", "utility"): 3}


# --- a business's USAGE_FETCH reads its own counts only (threat model T70) -------------


def test_a_usage_read_costs_the_same_however_many_businesses_are_counted(
    tmp_path: Path,
) -> None:
    """USAGE_FETCH (operation ``usage_month``, run by the writer) read every row of the
    ``usage`` table — all businesses, all months, kept for ever — to answer one business
    for one month: ``(? IS NULL OR business = ?)`` keeps SQLite from its primary key
    (found in review, T70: 9 ms a fetch at 200,000 rows, and any business may fetch 20
    at once and one a second). Counted in SQLite's VM steps (deterministic): one
    business's month costs about the same with 3,000 other businesses' counts as with 30."""
    tables = Tables(connect(tmp_path / "r.db"))
    writer = GroupCommitter(tables)
    steps: dict[int, int] = {}
    counted = 0
    for businesses in (30, 3000):

        def count_more(store: Tables, first: int = counted, last: int = businesses) -> None:
            for n in range(first, last):
                store.usage.count(f"shop{n}", NOW, Meter.USER_INITIATED, None)
                store.usage.count(f"shop{n}", NOW, Meter.NOTIFICATION, "utility")

        assert all(ok for ok, _ in writer.commit([count_more]))
        counted = businesses
        ran = [0]

        def step(ran: list[int] = ran) -> int:
            ran[0] += 1
            return 0

        tables.db.conn.set_progress_handler(step, 1)
        usage = tables.usage.month("shop7", MONTH)
        tables.db.conn.set_progress_handler(None, 1)
        assert (usage.notifications, usage.user_initiated) == ({"utility": 1}, 1)
        steps[businesses] = ran[0]
    assert steps[3000] <= 2 * steps[30], steps


def test_a_usage_read_on_postgresql_is_by_the_key_under_a_generic_plan(
    pg_database: PostgresDatabase,
) -> None:
    """T70 on PostgreSQL: the same ``($1 IS NULL OR business = $1)`` query is planned
    for the values given for the first executions of its prepared statement (an index
    scan), but a generic plan — ``plan_cache_mode = force_generic_plan``, or the one the
    planner picks for good while the table is small — read the whole table (a sequential
    scan of 6,000 rows for one business's month). Counted in the transaction's own scan
    statistics (``pg_stat_xact_user_tables``, before and after): one index scan of
    ``usage`` and no sequential scan (before the fix: 2 and 0, a parallel scan)."""

    async def scans() -> tuple[int, int, dict[str, int]]:
        async with started(pg_database.url):
            pass  # the schema
        conn = await asyncpg.connect(
            pg_database.url, server_settings={"plan_cache_mode": "force_generic_plan"}
        )
        try:
            await conn.execute("DELETE FROM usage")
            await conn.execute(
                "INSERT INTO usage (business, month, meter, category, count)"
                " SELECT 'shop' || n, $1, m, c, 1 FROM generate_series(0, 2999) AS n,"
                " (VALUES ('user_initiated', ''), ('notification', 'utility')) AS k(m, c)",
                MONTH,
            )
            await conn.execute("ANALYZE usage")
            counted = (
                "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables"
                " WHERE relname = 'usage'"
            )
            async with conn.transaction():
                before = await conn.fetchrow(counted)
                found = await usage_months(conn, "shop7", MONTH)
                after = await conn.fetchrow(counted)
        finally:
            await conn.close()
        assert [(u.business, u.month) for u in found] == [("shop7", MONTH)]
        seq, index = (int(after[n]) - int(before[n]) for n in (0, 1))
        return seq, index, found[0].notifications

    seq_scans, index_scans, notifications = asyncio.run(scans())
    assert notifications == {"utility": 1}
    assert (seq_scans, index_scans) == (0, 1)
