"""``blindrelay inspect``: show everything the relay holds (SPEC §11).

Every table with its row count, then the rows an operator might worry about:
accounts (handle, kind, key fingerprint prefix), prekey counts, and queued
envelopes as metadata plus the first bytes of the ciphertext in hex, so
anyone can see with their own eyes that no plaintext is stored; pair states,
statements, profiles, badges and usage counts as metadata (SPEC §7–§8), never
a signature or signed body. The relay's private seed is never printed.

Reads through sqlite-utils' inspection API on a read-only connection; safe
to run next to a live relay (WAL readers do not block the writer).

Not here: the schema (``tables``), other back ends (each has its own report).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from .database import connect_reader

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
        yield from _pairs(db, limit)
        yield from _statements(db, limit)
        yield from _business(db, limit)
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


def _when(ms: int) -> str:
    return f"{datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"


def _pairs(db: sqlite_utils.Database, limit: int) -> Iterator[str]:
    yield (
        f"pairs ({db['pairs'].count}; consent, pending request, window end, blockers,"
        " who wrote, message requests):"
    )
    rows = db.execute(
        "SELECT low, high, consent, pending, window_until, blockers, wrote, requests FROM pairs"
        " ORDER BY low, high LIMIT ?",
        (limit,),
    ).fetchall()
    for low, high, consent, pending, window_until, blockers, wrote, requests in rows:
        window = _when(window_until) if window_until else "-"
        yield (
            f"  {low} ↔ {high} consent={consent} pending={pending or '-'}"
            f" window_until={window} blockers={blockers or '-'} wrote={wrote or '-'}"
            f" requests={requests}"
        )


def _statements(db: sqlite_utils.Database, limit: int) -> Iterator[str]:
    yield f"statements ({db['statements'].count}; metadata, * = in force):"
    rows = db.execute(
        "SELECT s.seq, s.signer, s.target, s.action, s.categories, s.issued_at,"
        " EXISTS (SELECT 1 FROM statements_in_force f WHERE f.seq = s.seq)"
        " FROM statements s ORDER BY s.seq LIMIT ?",
        (limit,),
    ).fetchall()
    for seq, signer, target, action, categories, issued_at, in_force in rows:
        label = action + (f"/{categories}" if categories else "")
        yield f"  {'*' if in_force else ' '}#{seq} {signer} → {target} {label} {_when(issued_at)}"


def _business(db: sqlite_utils.Database, limit: int) -> Iterator[str]:
    yield "profiles (handle, signed size, updated):"
    for handle, size, updated_at in db.execute(
        "SELECT handle, length(signed), updated_at FROM profiles ORDER BY handle LIMIT ?", (limit,)
    ).fetchall():
        yield f"  {handle} {size} bytes {_when(updated_at)}"
    yield "badges (serial, handle, display name, expires, revoked):"
    for serial, handle, name, expires_at, revoked_at in db.execute(
        "SELECT serial, handle, display_name, expires_at, revoked_at FROM badges"
        " ORDER BY issued_at LIMIT ?",
        (limit,),
    ).fetchall():
        revoked = _when(revoked_at) if revoked_at is not None else "no"
        yield f"  {serial} {handle} {name!r} expires={_when(expires_at)} revoked={revoked}"
    yield "usage (business, month, meter, category, count):"
    for business, month, meter, category, count in db.execute(
        "SELECT business, month, meter, category, count FROM usage"
        " ORDER BY business, month, meter, category LIMIT ?",
        (limit,),
    ).fetchall():
        yield f"  {business} {month} {meter}{'/' + category if category else ''} {count}"
