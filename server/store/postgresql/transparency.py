"""The transparency log in the PostgreSQL back end (SPEC §15): tables and operations.

The tables are the SQLite back end's (``..sqlite.transparency`` says what each
holds). What several workers sharing the database add: the log is one sequence
for all of them, so an append first takes the transaction-scoped advisory lock
:data:`LOG_LOCK` and reads the log's size and right edge under it — two workers'
appends never interleave, and the lock is held until the batch commits, so no
one reads a size that a rolled-back append made. The lock is taken after the
batch locked its accounts (``batch.lock_set``) and nothing is locked after it,
so it adds no lock cycle.

Not here: what is appended when (``operations`` calls :func:`append` inside the
operation that makes the change; ``..transparency`` builds the entries), hashing
and proofs (the protocol package).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from blindrelay.protocol.errors import NotFound
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import decode_entry
from blindrelay.protocol.transparency.merkle import Node

from .. import transparency
from ..records import LogHead, head_row

SCHEMA = """
CREATE TABLE log_entries (
    seq bigint PRIMARY KEY,
    data bytea NOT NULL
);
CREATE TABLE log_nodes (
    level smallint NOT NULL,
    node_index bigint NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (level, node_index)
);
CREATE TABLE log_heads (
    size bigint PRIMARY KEY,
    root bytea NOT NULL,
    timestamp bigint NOT NULL,
    signed bytea NOT NULL
);
"""
"""Schema 4 (``schema.MIGRATIONS``)."""

BINDINGS_SCHEMA = """
CREATE TABLE log_bindings (
    handle text PRIMARY KEY,
    seq bigint NOT NULL
);
CREATE INDEX log_leaves ON log_nodes (hash) WHERE level = 0;
"""
"""Schema 6: each published handle's newest key binding, what BUNDLE proves, and
leaves found by hash (SPEC §15.6); filled from the log by :func:`rebuild_bindings`."""

TIMES_SCHEMA = """
DROP INDEX log_leaves;
CREATE TABLE log_times (
    at bigint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (at, seq)
);
"""
"""Schema 7: entries found by their ``at``, an index that grows in order, in place of
the leaf-hash index (a random insert per append); filled by :func:`rebuild_times`."""

TAGS_SCHEMA = """
DROP TABLE log_times;
CREATE TABLE log_times (
    at bigint NOT NULL,
    tag bytea NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (at, tag, seq)
);
"""
"""Schema 11: ``log_times`` keyed by ``at`` and the entry's lookup tag
(``..transparency.lookup_tag``: a signer could pile entries on one ``at``), made anew
and filled by :func:`rebuild_times`."""

TABLES = ("log_entries", "log_nodes", "log_heads", "log_bindings", "log_times")

LOG_LOCK = 0x626C6F67  # "blog": the advisory lock every append takes
"""``pg_advisory_xact_lock`` key serializing appends across workers."""


async def current_size(conn: Any) -> int:
    value = await conn.fetchval("SELECT max(seq) FROM log_entries")
    return 0 if value is None else int(value) + 1


async def nodes(conn: Any, wanted: Sequence[Node]) -> dict[Node, bytes]:
    """The stored hashes of ``wanted`` in one query; a missing one is a corrupt log."""
    rows = await conn.fetch(
        'SELECT n.level, n.node_index, n.hash FROM log_nodes n'
        ' JOIN unnest($1::smallint[], $2::bigint[]) w(level, node_index)'
        ' ON n.level = w.level AND n.node_index = w.node_index',
        [node.level for node in wanted],
        [node.offset for node in wanted],
    )
    found = {Node(row[0], row[1]): bytes(row[2]) for row in rows}
    missing = [node for node in wanted if node not in found]
    if missing:
        raise KeyError(f"log_nodes lacks {missing[:3]}")
    return found


async def _lookup(conn: Any, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """A proof's hashes: the nodes its ranges need, fetched at once, then folded."""
    hashes = await nodes(conn, merkle.proof_nodes(ranges))
    return [merkle.range_hash(merkle.nodes_of(start, end), hashes) for start, end in ranges]


async def inclusion(conn: Any, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) from the stored subtrees."""
    return await _lookup(conn, merkle.inclusion_ranges(index, size))


async def root_at(conn: Any, tree_size: int) -> bytes:
    if tree_size == 0:
        return merkle.EMPTY_ROOT
    return (await _lookup(conn, [(0, tree_size)]))[0]


async def append(conn: Any, entries: Sequence[bytes]) -> int:
    """Append in order under :data:`LOG_LOCK`, with every subtree the entries finish."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", LOG_LOCK)
    first = await current_size(conn)
    edge = merkle.nodes_of(0, first) if first else []
    stored = await nodes(conn, edge) if edge else {}
    frontier = merkle.Frontier.resume(first, lambda wanted: {n: stored[n] for n in wanted})
    levels: list[int] = []
    offsets: list[int] = []
    hashes: list[bytes] = []
    for data in entries:
        for node, value in frontier.append(merkle.leaf_hash(data)):
            levels.append(node.level)
            offsets.append(node.offset)
            hashes.append(value)
    seqs = list(range(first, first + len(entries)))
    await conn.execute(
        "INSERT INTO log_entries (seq, data) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
        seqs,
        list(entries),
    )
    await conn.execute(
        "INSERT INTO log_times (at, tag, seq)"
        " SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[])",
        [transparency.entry_time(data) for data in entries],
        [transparency.lookup_tag(data) for data in entries],
        seqs,
    )
    await conn.execute(
        'INSERT INTO log_nodes (level, node_index, hash)'
        " SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
        levels,
        offsets,
        hashes,
    )
    return first


async def append_one(conn: Any, entry: bytes | None) -> None:
    """SPEC §15.1: the entry commits in the operation's transaction, with what it records."""
    if entry is not None:
        await append(conn, [entry])


async def append_binding(conn: Any, handle: str, entry: bytes | None) -> None:
    """A key binding, and ``handle``'s newest binding is now it (SPEC §15.6 rule 3)."""
    if entry is not None:
        await bind(conn, handle, await append(conn, [entry]))


async def bind(conn: Any, handle: str, seq: int) -> None:
    await conn.execute(
        "INSERT INTO log_bindings (handle, seq) VALUES ($1, $2)"
        " ON CONFLICT (handle) DO UPDATE SET seq = excluded.seq",
        handle, seq,
    )  # fmt: skip


async def bound(conn: Any, handle: str) -> int | None:
    value = await conn.fetchval("SELECT seq FROM log_bindings WHERE handle = $1", handle)
    return None if value is None else int(value)


async def rebuild_times(conn: Any) -> None:
    """Schema 11 on an existing log: ``log_times`` from the entries."""
    rows = await conn.fetch("SELECT seq, data FROM log_entries ORDER BY seq")
    await conn.execute(
        "INSERT INTO log_times (at, tag, seq)"
        " SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[]) ON CONFLICT DO NOTHING",
        [transparency.entry_time(bytes(r[1])) for r in rows],
        [transparency.lookup_tag(bytes(r[1])) for r in rows],
        [int(r[0]) for r in rows],
    )


async def rebuild_bindings(conn: Any) -> None:
    """Schema 6 on an existing database: ``log_bindings`` from the entries."""
    rows = await conn.fetch("SELECT seq, data FROM log_entries ORDER BY seq")
    newest = transparency.newest_bindings((int(r[0]), bytes(r[1])) for r in rows)
    for handle, seq in newest.items():
        await bind(conn, handle, seq)


async def log_existing_businesses(conn: Any) -> None:
    """Schema 4: the log starts with the key of every business registered before it
    (SPEC §15.1), oldest first, each at its registration time."""
    rows = await conn.fetch(
        "SELECT handle, kind, identity_key, created_at FROM accounts WHERE kind = 'business'"
        " ORDER BY created_at, handle"
    )
    found = [transparency.key_binding(r[0], r[1], bytes(r[2]), r[3]) for r in rows]
    logged = [entry for entry in found if entry is not None]
    if logged:
        await append(conn, logged)


async def newest_head(conn: Any) -> LogHead | None:
    row = await conn.fetchrow(
        "SELECT size, root, timestamp, signed FROM log_heads ORDER BY size DESC LIMIT 1"
    )
    return None if row is None else LogHead(row[0], bytes(row[1]), row[2], bytes(row[3]))


# --- the operations of ..operations.CONTRACT (called with the batch's Tx) ------------


async def log_append(tx: Any, entries: list[bytes]) -> int:
    for entry in entries:  # SPEC §15.1: only the encodings a log may hold
        decode_entry(entry)
    return await append(tx.conn, entries)


async def log_state(tx: Any) -> list[Any]:
    conn = tx.conn
    current = await current_size(conn)
    return [current, await root_at(conn, current), head_row(await newest_head(conn))]


async def log_add_head(tx: Any, size: int, root: bytes, timestamp: int, signed: bytes) -> bool:
    conn = tx.conn
    await conn.execute("SELECT pg_advisory_xact_lock($1)", LOG_LOCK)  # one head at a time
    head = LogHead(size, root, timestamp, signed)
    log_size = await current_size(conn)
    root_there = await root_at(conn, size) if 0 <= size <= log_size else None
    if not transparency.accept_head(await newest_head(conn), head, log_size, root_there):
        return False
    await conn.execute(
        "INSERT INTO log_heads (size, root, timestamp, signed) VALUES ($1, $2, $3, $4)",
        size, root, timestamp, signed,
    )  # fmt: skip
    return True


async def log_head(tx: Any) -> list[Any] | None:
    return head_row(await newest_head(tx.conn))


async def log_inclusion(tx: Any, index: int, size: int) -> list[bytes]:
    if not 0 <= index < size <= await current_size(tx.conn):
        raise NotFound()
    return await _lookup(tx.conn, merkle.inclusion_ranges(index, size))


async def log_consistency(tx: Any, first: int, second: int) -> list[bytes]:
    if not 0 < first <= second <= await current_size(tx.conn):
        raise NotFound()
    return await _lookup(tx.conn, merkle.consistency_ranges(first, second))


async def log_entries(tx: Any, start: int, limit: int) -> list[bytes]:
    rows = await tx.conn.fetch(
        "SELECT data FROM log_entries WHERE seq >= $1 ORDER BY seq LIMIT $2", start, limit
    )
    return [bytes(row[0]) for row in rows]


async def publish_key(tx: Any, handle: str, now: int) -> bool:
    """SPEC §15.6 rule 4: log a user's current key binding once (under the account's
    lock, so a rotation is ordered before or after it)."""
    conn = tx.conn
    if await bound(conn, handle) is not None:
        return False
    row = await conn.fetchrow("SELECT kind, identity_key FROM accounts WHERE handle = $1", handle)
    if row is None:
        return False
    entry = transparency.key_binding(handle, row[0], bytes(row[1]), now, published=True)
    await append_binding(conn, handle, entry)
    return True


async def log_signed_consistency(tx: Any, first: int, second: int) -> list[bytes]:
    transparency.check_signed_size(await newest_head(tx.conn), first, second)
    if first > second:
        raise NotFound()
    return await _lookup(tx.conn, merkle.consistency_ranges(first, second))


async def log_find(tx: Any, entry: bytes, size: int) -> list[Any]:
    conn = tx.conn
    transparency.check_signed_size(await newest_head(conn), size)
    at = transparency.entry_time(entry)
    index = None if at is None else await conn.fetchval(
        "SELECT min(t.seq) FROM log_times t JOIN log_entries e ON e.seq = t.seq"
        " WHERE t.at = $1 AND t.tag = $2 AND t.seq < $3 AND e.data = $4",
        at, transparency.lookup_tag(entry), size, entry,
    )  # fmt: skip
    if index is None:
        raise NotFound()
    return [int(index), await _lookup(conn, merkle.inclusion_ranges(int(index), size))]


async def log_binding_proof(tx: Any, handle: str) -> list[Any] | None:
    """SPEC §15.6 rule 3, as the SQLite back end: an unpublished handle costs one query."""
    conn = tx.conn
    seq = await bound(conn, handle)
    head = await newest_head(conn) if seq is not None else None
    if seq is None or head is None or seq >= head.size:
        return None
    entry = await conn.fetchval("SELECT data FROM log_entries WHERE seq = $1", seq)
    return [bytes(entry), seq, await inclusion(conn, seq, head.size), head.signed]


OPERATIONS: dict[str, Callable[..., Awaitable[Any]]] = {
    f.__name__: f
    for f in (
        log_append, log_state, log_add_head, log_head, log_inclusion, log_consistency,
        log_entries, publish_key, log_signed_consistency, log_find, log_binding_proof,
    )
}  # fmt: skip
WRITES = frozenset({"log_append", "log_add_head", "publish_key"})
