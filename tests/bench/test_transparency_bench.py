"""bench/transparency.py measures real logs: what it times produces proofs that verify
(no timing asserted here: speed is measured in bench/)."""

import random
from pathlib import Path

import pytest

from bench.transparency import MemoryLog, PostgresLog, SqliteLog, entry, measure, measure_bill
from blindrelay.protocol.transparency import merkle


@pytest.mark.parametrize(
    "backend", ["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_every_back_end_holds_the_same_tree(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The PostgreSQL log is built from the relay's own migrations' tables (a table the
    bench forgets fails here, not in a benchmark run)."""
    if backend == "postgresql":
        log = PostgresLog(request.getfixturevalue("pg_database").url)
    else:
        log = MemoryLog() if backend == "memory" else SqliteLog(tmp_path / "log.db")
    try:
        row = measure(log, 300, 64, 20, random.Random(1))
        assert row["entries"] == 300 and row["inclusion"]["hashes_max"] == 9
        assert row["consistency"]["hashes_max"] <= 2 * 9
        leaves = [merkle.leaf_hash(entry(i)) for i in range(300)]
        assert merkle.tree_root(300, log.nodes) == merkle.root_of(leaves)
    finally:
        log.close()


def test_the_bill_measured_is_closed_by_the_relays_own_job(tmp_path: Path) -> None:
    """measure_bill closes a real bill (every item) and serves real pages of it."""
    row = measure_bill(tmp_path / "bill.db", 300, 5)
    assert row["items"] == 300 and row["close_items_per_s"] > 0 and row["page"]["p99_ms"] > 0
