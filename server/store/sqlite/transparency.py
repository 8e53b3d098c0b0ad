"""The transparency log's tables in the SQLite back end (SPEC §15).

- ``log_entries`` — entry ``seq`` (the leaf index, from 0) → its exact bytes;
- ``log_nodes`` — every complete subtree ``(level, node_index)`` (a ``merkle.Node``)
  → its hash: level 0 is the leaf hashes. Written once when an append completes the subtree, never
  changed, so an inclusion or consistency proof, or the root of any size, is one
  indexed lookup of a few dozen rows (:mod:`blindrelay.protocol.transparency.merkle`),
  whatever the log's size;
- ``log_heads`` — the signed tree heads, by size;
- ``log_bindings`` — each published handle's newest key binding (its index), what
  BUNDLE proves (SPEC §15.6);
- ``log_times`` — every entry's ``at``, lookup tag and index: LOG_INCLUSION_FETCH finds
  an entry by its time and tag (``..transparency.lookup_tag``), an index that grows in
  order (a hash index cost a random B-tree insert per append: 48k appends/s fell to 18k
  at a million entries), and whose keys no signer can pile up on one ``at``.

Appends run inside the caller's transaction (a writer job), so an entry commits
with the change it records or not at all; the log's right edge is read back from
``log_nodes`` (at most 63 rows) at each append rather than cached, so a job that
is rolled back leaves nothing behind to disagree with the file.

Not here: what is appended when (``..jobs``), tree-head rules (``..rules``),
hashing and proofs (the protocol package).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlite_utils

from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.merkle import Node

from .. import transparency
from ..records import LogHead
from ..transparency import entry_time, lookup_tag

_TABLES = """
CREATE TABLE IF NOT EXISTS log_entries (
    seq INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS log_nodes (
    level INTEGER NOT NULL,
    node_index INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, node_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_heads (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    signed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS log_bindings (
    handle TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""

TIMES_TABLE = """
CREATE TABLE IF NOT EXISTS log_times (
    at INTEGER NOT NULL,
    tag BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (at, tag, seq)
) WITHOUT ROWID;
"""
"""``log_times`` alone, for the migration that makes it anew (schema 12)."""

SCHEMA = _TABLES + TIMES_TABLE

_NODE = "SELECT hash FROM log_nodes WHERE level = ? AND node_index = ?"


class TransparencyLog:
    """The three log tables over one connection (the writer's, or a reader's)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._conn = db.conn

    def size(self) -> int:
        row = self._conn.execute("SELECT max(seq) FROM log_entries").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def nodes(self, wanted: Sequence[Node]) -> dict[Node, bytes]:
        """The stored hashes of ``wanted``; a missing one is a corrupt log (KeyError).

        One primary-key lookup per node (a proof needs a few dozen): SQLite answers
        each in microseconds, where one ``IN`` over row values scanned the table.
        """
        execute = self._conn.execute
        found: dict[Node, bytes] = {}
        for node in wanted:
            row = execute(_NODE, node).fetchone()
            if row is None:
                raise KeyError(f"log_nodes lacks {node}")
            found[node] = row[0]
        return found

    def append(self, entries: Iterable[bytes]) -> int:
        """Append entries in order, with every subtree they complete; the first's index.

        Runs in the caller's transaction. One read of the right edge, then two
        ``executemany`` for the whole batch.
        """
        size = self.size()
        frontier = merkle.Frontier.resume(size, self.nodes)
        rows = []
        made: list[tuple[int, int, bytes]] = []
        for seq, data in enumerate(entries, start=size):
            rows.append((seq, data))
            made.extend((n.level, n.offset, h) for n, h in frontier.append(merkle.leaf_hash(data)))
        self._conn.executemany("INSERT INTO log_entries (seq, data) VALUES (?, ?)", rows)
        self._conn.executemany(
            "INSERT INTO log_times (at, tag, seq) VALUES (?, ?, ?)",
            [(entry_time(data), lookup_tag(data), seq) for seq, data in rows],
        )
        self._conn.executemany(
            "INSERT INTO log_nodes (level, node_index, hash) VALUES (?, ?, ?)", made
        )
        return size

    def root(self, size: int) -> bytes:
        return merkle.tree_root(size, self.nodes)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return merkle.inclusion_proof(index, size, self.nodes)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return merkle.consistency_proof(first, second, self.nodes)

    def entries(self, start: int, limit: int) -> list[bytes]:
        rows = self._conn.execute(
            "SELECT data FROM log_entries WHERE seq >= ? ORDER BY seq LIMIT ?", (start, limit)
        )
        return [data for (data,) in rows]

    def entry(self, seq: int) -> bytes:
        row = self._conn.execute("SELECT data FROM log_entries WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0])

    def find(self, entry: bytes, size: int) -> int | None:
        """The first index below ``size`` holding exactly ``entry``: the entries of its
        time and tag, compared byte for byte (an index lookup and, but for a 64-bit
        collision, one row)."""
        at = entry_time(entry)
        if at is None:
            return None
        rows = self._conn.execute(
            "SELECT t.seq, e.data FROM log_times t JOIN log_entries e ON e.seq = t.seq"
            " WHERE t.at = ? AND t.tag = ? AND t.seq < ? ORDER BY t.seq",
            (at, lookup_tag(entry), size),
        )
        return next((int(seq) for seq, data in rows if bytes(data) == entry), None)

    def rebuild_times(self) -> None:
        """Fill ``log_times`` from the entries (a store that predates the table or its tags)."""
        rows = self._conn.execute("SELECT seq, data FROM log_entries ORDER BY seq").fetchall()
        self._conn.executemany(
            "INSERT OR IGNORE INTO log_times (at, tag, seq) VALUES (?, ?, ?)",
            [(entry_time(bytes(data)), lookup_tag(bytes(data)), seq) for seq, data in rows],
        )

    def bind(self, handle: str, seq: int) -> None:
        self._conn.execute(
            "INSERT INTO log_bindings (handle, seq) VALUES (?, ?)"
            " ON CONFLICT (handle) DO UPDATE SET seq = excluded.seq",
            (handle, seq),
        )

    def bound(self, handle: str) -> int | None:
        row = self._conn.execute(
            "SELECT seq FROM log_bindings WHERE handle = ?", (handle,)
        ).fetchone()
        return None if row is None else int(row[0])

    def rebuild_bindings(self) -> None:
        """Fill ``log_bindings`` from the entries (a store that predates the table)."""
        rows = self._conn.execute("SELECT seq, data FROM log_entries ORDER BY seq")
        for handle, seq in transparency.newest_bindings(rows).items():
            self.bind(handle, seq)

    def head(self) -> LogHead | None:
        """The newest signed tree head, if any."""
        row = self._conn.execute(
            "SELECT size, root, timestamp, signed FROM log_heads ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else LogHead(*row)

    def add_head(self, head: LogHead) -> None:
        self._conn.execute(
            "INSERT INTO log_heads (size, root, timestamp, signed) VALUES (?, ?, ?, ?)",
            (head.size, head.root, head.timestamp, head.signed),
        )

