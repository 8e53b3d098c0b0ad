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

The upgrade is the only code that knows version 1's keys: it replays each old
row through the typed method of its kind (:func:`replay_v1_state`,
:func:`replay_v1_log`), so an upgraded record is checked like a new one.

What it is not: the sealing (``sealing``) or the records' meaning (the kinds'
modules).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import msgpack

from .base import LOG_TABLES, ROW_TABLES
from .records import KeyStoreCorrupted, KeyStoreTooNew, OutboxEntry
from .sealing import Sealer
from .settings import SettingRecords

SCHEMA_VERSION = 6
"""3: ``sent_notifications`` (a business's SENT notifications, to check its bills) and
``chat_history`` (the chat's conversations, shown again after a restart). 4:
``published`` (accounts seen published, and the key of each last proven logged). 5:
``heard_heads`` (contacts' tree heads the relay has not proven consistent yet). 6:
``log_forks`` (the split-view alarm's evidence; an older SDK, which would forget the
alarm, refuses the file)."""

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


def upgrade_tables(conn: sqlite3.Connection, sealer: Sealer, store: SettingRecords) -> None:
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


def _move_logs(conn: sqlite3.Connection, sealer: Sealer, store: SettingRecords) -> None:
    """Version 1's ``logs`` rows, in the order appended, into their kind's log."""
    for seq, g, sealed in conn.execute("SELECT seq, g, v FROM logs ORDER BY seq").fetchall():
        group, record = sealer.open("logs", g + seq.to_bytes(8, "big"), sealed)
        if not isinstance(group, str) or sealer.lookup("logs", group.encode()) != g:
            raise KeyStoreCorrupted("a log row is filed under another group")
        try:
            replay_v1_log(store, group, bytes(record))
        except (TypeError, ValueError) as exc:
            raise _unknown(exc) from None


def _move_state(conn: sqlite3.Connection, sealer: Sealer, store: SettingRecords) -> None:
    """Version 1's ``state`` rows into their kind's table, through the old keys' routes."""
    records = []
    for k, sealed in conn.execute("SELECT k, v FROM state").fetchall():
        key, value = sealer.open("state", k, sealed)
        if not isinstance(key, str) or sealer.lookup("state", key.encode()) != k:
            raise KeyStoreCorrupted("a state row is filed under another key")
        records.append((key, bytes(value)))
    for key, value in sorted(records):
        try:
            replay_v1_state(store, key, value)
        except (TypeError, ValueError) as exc:
            raise _unknown(exc) from None


def _unknown(exc: Exception) -> KeyStoreCorrupted:
    """A version 1 record this code never wrote: refused rather than lost silently."""
    return KeyStoreCorrupted(f"a version 1 record of no known kind or shape: {exc}")


# --- Version 1's keys, each replayed through its kind's typed method --------------------


def _u64(value: bytes) -> int:
    if len(value) != 8:
        raise ValueError("expected a u64 (8 bytes)")
    return int.from_bytes(value, "big")


def _packed_list(value: bytes) -> list[Any]:
    items = msgpack.unpackb(value, raw=False)
    if not isinstance(items, list):
        raise ValueError("expected a packed list")
    return items


def _json_object(value: bytes) -> dict[str, Any]:
    loaded = json.loads(value)
    if not isinstance(loaded, dict):
        raise ValueError("expected a JSON object")
    return loaded


def _outbox(store: SettingRecords, suffix: str, value: bytes) -> None:
    """``<position 020d>.<msg_id hex>`` → [to, envelope, intent, category, categories]."""
    position, _, msg_id = suffix.partition(".")
    to, envelope, intent, category, categories = _packed_list(value)
    categories = None if categories is None else tuple(categories)
    entry = OutboxEntry(
        int(position), bytes.fromhex(msg_id), to, envelope, intent, category, categories
    )
    store.queue_outgoing(entry)


def _statement_count(store: SettingRecords, counterpart: str, value: bytes) -> None:
    """Written beside each log row: the replayed log (moved first) counts them again."""
    _u64(value)


def _old_statements(store: SettingRecords, counterpart: str, value: bytes) -> None:
    """The format before the log: one packed list, filed as kept statements in order."""
    for signed in _packed_list(value):
        store.keep_statement(counterpart, bytes(signed))


def _held_counts(store: SettingRecords, sender: str, value: bytes) -> None:
    """Two u64, held and dropped: the replayed log (moved first) counts the held ones
    again; the dropped ones, which left no record, are counted here."""
    if len(value) != 16:
        raise ValueError("held counts are two u64")
    _u64(value[:8])
    for _ in range(_u64(value[8:])):
        store.count_dropped(sender)


def _chat_contacts(store: SettingRecords, _: str, value: bytes) -> None:
    for handle, kind in _json_object(value).items():
        if not isinstance(kind, str):
            raise ValueError("a chat contact's kind is a str")
        store.set_chat_contact(handle, kind)


def _consent_requests(store: SettingRecords, _: str, value: bytes) -> None:
    for business, categories in _json_object(value).items():
        if not isinstance(categories, list):
            raise ValueError("consent request categories are a list")
        store.set_consent_request(business, tuple(categories))


_Replay = Callable[[SettingRecords, str, bytes], None]
"""Files one old row: the store, the key after its prefix, the value."""

_V1_KEYS: dict[str, _Replay] = {
    "sdk/relay-key": lambda s, _, v: s.set_relay_key(v),
    "sdk/registered": lambda s, _, v: s.set_registered(),
    "sdk/rotating-identity-seed": lambda s, _, v: s.set_rotating_identity_seed(v),
    "business/profile": lambda s, _, v: s.set_business_profile(v),
    "chat/contacts": _chat_contacts,
    "chat/requests": _consent_requests,
    "sdk/outbox": lambda s, _, v: None,  # one list, unread since the outbox got a row each
}
_V1_PREFIXES: dict[str, _Replay] = {
    "sdk/outbox/": _outbox,
    "sdk/statement-count/": _statement_count,
    "sdk/statements/": _old_statements,
    "sdk/held/": _held_counts,
    "sdk/owed-receipts/": lambda s, h, v: s.set_owed_receipts(
        h, [bytes(m) for m in _packed_list(v)]
    ),
    "sdk/wrote-to/": lambda s, h, _: s.note_wrote_to(h),
    "identity-change/": lambda s, h, v: s.record_identity_change(h, v),
    "business/away/": lambda s, c, v: s.set_away_reply_period(c, _u64(v)),
}
_V1_LOGS: dict[str, Callable[[SettingRecords, str, bytes], object]] = {
    "statements/": lambda s, c, r: s.keep_statement(c, r),
    "held/": lambda s, sender, r: s.hold_message(sender, r),
}


def _route(routes: dict[str, Any], key: str) -> tuple[Any, str] | None:
    for prefix, route in routes.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return route, key[len(prefix) :]
    return None


def replay_v1_state(store: SettingRecords, key: str, value: bytes) -> None:
    """File one row of version 1's ``state`` table in its kind's table (after the logs:
    the count rows rely on them). ValueError or TypeError for a key of no known kind
    or a value of the wrong shape."""
    exact = _V1_KEYS.get(key)
    found = (exact, "") if exact is not None else _route(_V1_PREFIXES, key)
    if found is None:
        raise ValueError(f"no record kind for the state key {key.partition('/')[0]!r}…")
    found[0](store, found[1], value)


def replay_v1_log(store: SettingRecords, group: str, record: bytes) -> None:
    """Append one row of version 1's ``logs`` table to its kind's log, counting it."""
    found = _route(_V1_LOGS, group)
    if found is None:
        raise ValueError("no record kind for this log group")
    found[0](store, found[1], record)
