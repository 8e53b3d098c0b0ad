"""The SQLite key store's tables, their version, and the upgrade of older files.

Version 1 (``user_version`` 0, files made before it was counted) kept the SDK's
records in one ``state`` table and one ``logs`` table, keyed by strings that named
their kind; a file might also lack ``key_owners`` or ``logs``, added later.
Version 2 gives every kind of record its own table (``base.ROW_TABLES``,
``base.LOG_TABLES``), so listing one kind opens no row of another. Opening a
version 1 file moves every record into its table in one transaction — a crash
leaves version 1, opened again next time — and drops the old tables
(``secure_delete`` zeroes their pages). A file of a version above
:data:`SCHEMA_VERSION` is refused with :class:`KeyStoreTooNew`.

What it is not: the sealing (``sealing``) or the routing of the old keys to
the new tables (``legacy``, which the upgrade replays the old rows through).
"""

from __future__ import annotations

import sqlite3

from .base import LOG_TABLES, ROW_TABLES
from .legacy import RETIRED_KEYS, LegacyStateBag
from .records import KeyStoreCorrupted, KeyStoreTooNew
from .sealing import Sealer

SCHEMA_VERSION = 2

_HEADER = (
    "CREATE TABLE header (id INTEGER PRIMARY KEY, format INTEGER NOT NULL,"
    " salt BLOB NOT NULL, opslimit INTEGER NOT NULL, memlimit INTEGER NOT NULL,"
    " wrapped_master BLOB NOT NULL)"
)


def _tables() -> list[str]:
    statements = [
        f"CREATE TABLE IF NOT EXISTS {table} (k BLOB PRIMARY KEY, v BLOB NOT NULL)"
        for table in ROW_TABLES
    ]
    for table in LOG_TABLES:
        statements += [
            f"CREATE TABLE IF NOT EXISTS {table}"
            " (seq INTEGER PRIMARY KEY, g BLOB NOT NULL, v BLOB NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {table}_by_group ON {table} (g, seq)",
        ]
    return [
        *statements,
        "CREATE TABLE IF NOT EXISTS processed (seq INTEGER PRIMARY KEY, k BLOB NOT NULL)",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_processed_k ON processed (k)",
        "CREATE TABLE IF NOT EXISTS inbox"
        " (seq INTEGER PRIMARY KEY, k BLOB NOT NULL, v BLOB NOT NULL)",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_inbox_k ON inbox (k)",
    ]


def version(conn: sqlite3.Connection) -> int:
    ((found,),) = conn.execute("PRAGMA user_version").fetchall()
    return int(found)


def create_tables(conn: sqlite3.Connection) -> None:
    """The tables of a new file (the caller's transaction)."""
    conn.execute(_HEADER)
    for statement in _tables():
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def upgrade_tables(conn: sqlite3.Connection, sealer: Sealer, store: LegacyStateBag) -> None:
    """Bring a file of an earlier version up to date; nothing for a current one."""
    found = version(conn)
    if found > SCHEMA_VERSION:
        raise KeyStoreTooNew(found, SCHEMA_VERSION)
    if found == SCHEMA_VERSION:
        return
    existing = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    with store.atomic():
        for statement in _tables():
            conn.execute(statement)
        store.index_identity_keys()  # a file made before the key index
        if "logs" in existing:
            _move_logs(conn, sealer, store)
        if "state" in existing:
            _move_state(conn, sealer, store)
        conn.execute("DROP TABLE IF EXISTS logs")
        conn.execute("DROP TABLE IF EXISTS state")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _move_logs(conn: sqlite3.Connection, sealer: Sealer, store: LegacyStateBag) -> None:
    """Version 1's ``logs`` rows, in the order appended, into their kind's log."""
    for seq, g, sealed in conn.execute("SELECT seq, g, v FROM logs ORDER BY seq").fetchall():
        group, record = sealer.open("logs", g + seq.to_bytes(8, "big"), sealed)
        if not isinstance(group, str) or sealer.lookup("logs", group.encode()) != g:
            raise KeyStoreCorrupted("a log row is filed under another group")
        try:
            store.append_log(group, bytes(record))
        except (TypeError, ValueError) as exc:
            raise _unknown(exc) from None


def _move_state(conn: sqlite3.Connection, sealer: Sealer, store: LegacyStateBag) -> None:
    """Version 1's ``state`` rows into their kind's table, through the old keys' routes."""
    records = []
    for k, sealed in conn.execute("SELECT k, v FROM state").fetchall():
        key, value = sealer.open("state", k, sealed)
        if not isinstance(key, str) or sealer.lookup("state", key.encode()) != k:
            raise KeyStoreCorrupted("a state row is filed under another key")
        records.append((key, bytes(value)))
    for key, value in sorted(records):
        if key in RETIRED_KEYS:
            continue
        try:
            store.set_state(key, value)
        except (TypeError, ValueError) as exc:
            raise _unknown(exc) from None


def _unknown(exc: Exception) -> KeyStoreCorrupted:
    """A version 1 record this code never wrote: refused rather than lost silently."""
    return KeyStoreCorrupted(f"a version 1 record of no known kind or shape: {exc}")
