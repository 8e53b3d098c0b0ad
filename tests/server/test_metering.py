"""server/store/rules.py and sqlite/metering.py: the month a count goes to (SPEC §8.4: UTC
calendar months), and
counts written once per commit, in the transaction of what they count."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from blindrelay.protocol.consent import Meter
from blindrelay.protocol.errors import QueueFull
from blindrelay.protocol.transparency.bills import month_of, month_span
from blindrelay.server.store import Account
from blindrelay.server.store.sqlite.commit import GroupCommitter
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

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
