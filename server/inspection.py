"""``blindrelay inspect``: show everything the relay holds (SPEC §11).

Every table with its row count, then the rows an operator might worry about:
accounts (handle, kind, key fingerprint prefix), prekey counts, and queued
envelopes as metadata plus the first bytes of the ciphertext in hex, so
anyone can see with their own eyes that no plaintext is stored. The relay's
private seed is never printed.

Reads through sqlite-utils' inspection API on a read-only connection; safe
to run next to a live relay (WAL readers do not block the writer).

Not here: the schema (``storage``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from .storage import connect_reader

CIPHERTEXT_PREFIX_BYTES = 8
"""Bytes of each envelope body shown; enough to see it is random-looking."""


def inspect_database(path: Path, limit: int = 50) -> Iterator[str]:
    """Lines of the report; at most ``limit`` rows per listed table."""
    db = connect_reader(path)
    try:
        yield f"database {path}"
        yield "tables:"
        for name in db.table_names():
            yield f"  {name:<20} {db[name].count:>8} rows"
        yield from _relay_identity(db)
        yield from _accounts(db, limit)
        yield from _queue(db, limit)
    finally:
        db.conn.close()


def _relay_identity(db: sqlite_utils.Database) -> Iterator[str]:
    row = db.execute("SELECT public_key, created_at FROM relay_identity").fetchone()
    if row is not None:
        yield f"relay key {bytes(row[0]).hex()} (private seed stored, not shown)"


def _accounts(db: sqlite_utils.Database, limit: int) -> Iterator[str]:
    yield "accounts (handle, kind, identity key prefix, signed prekey, one-time prekeys):"
    rows = db.execute(
        "SELECT a.handle, a.kind, a.identity_key,"
        " EXISTS (SELECT 1 FROM signed_prekeys s WHERE s.handle = a.handle),"
        " (SELECT COUNT(*) FROM one_time_prekeys o WHERE o.handle = a.handle)"
        " FROM accounts a ORDER BY a.handle LIMIT ?",
        (limit,),
    ).fetchall()
    for handle, kind, key, signed, one_time in rows:
        yield (
            f"  {handle:<32} {kind:<8} {bytes(key)[:4].hex()}… "
            f"signed={'yes' if signed else 'no'} one_time={one_time}"
        )


def _queue(db: sqlite_utils.Database, limit: int) -> Iterator[str]:
    total = db["queue"].count
    yield (
        f"queued envelopes ({total}; metadata and first {CIPHERTEXT_PREFIX_BYTES} bytes"
        " of ciphertext):"
    )
    rows = db.execute(
        "SELECT delivery_id, sender, recipient, intent, category, categories, sent_at,"
        " length(body), substr(body, 1, ?) FROM queue ORDER BY delivery_id LIMIT ?",
        (CIPHERTEXT_PREFIX_BYTES, limit),
    ).fetchall()
    for delivery_id, sender, recipient, intent, category, categories, sent_at, size, head in rows:
        when = datetime.datetime.fromtimestamp(sent_at / 1000, datetime.UTC)
        label = (
            intent + (f"/{category}" if category else "") + (f"/{categories}" if categories else "")
        )
        yield (
            f"  #{delivery_id} {sender} → {recipient} {label} {when:%Y-%m-%dT%H:%M:%SZ}"
            f" {size} bytes {bytes(head).hex()}…"
        )
    if total > len(rows):
        yield f"  … {total - len(rows)} more"
