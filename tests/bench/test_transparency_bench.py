"""bench/transparency.py measures real logs: what it times produces proofs that verify
(no timing asserted here: speed is measured in bench/)."""

import random
from pathlib import Path

import pytest

from bench.transparency import MemoryLog, SqliteLog, entry, measure
from blindrelay.protocol.transparency import merkle


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_both_back_ends_hold_the_same_tree(backend: str, tmp_path: Path) -> None:
    log = MemoryLog() if backend == "memory" else SqliteLog(tmp_path / "log.db")
    row = measure(log, 300, 64, 20, random.Random(1))
    assert row["entries"] == 300 and row["inclusion"]["hashes_max"] == 9
    assert row["consistency"]["hashes_max"] <= 2 * 9
    leaves = [merkle.leaf_hash(entry(i)) for i in range(300)]
    assert merkle.tree_root(300, log.nodes) == merkle.root_of(leaves)
