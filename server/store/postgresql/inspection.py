"""``blindrelay inspect --store postgresql://…``: everything a relay's database holds (SPEC §11).

The same report as the SQLite back end's (``..sqlite.inspection``), line for line:
every table with its row count, the relay key (never the seed), accounts with their
prekey counts, queued envelopes as metadata and the first bytes of their ciphertext in
hex, pair states, statements, profiles, badges and usage as metadata — never a
signature or a signed body. Only the first line differs: the database's URL (without
its password) in place of a path.

Rows come in the SQLite report's order (text compared bytewise, ``COLLATE "C"``, not
by the database's locale). Read-only: one ``REPEATABLE READ READ ONLY`` transaction,
so every count and row comes from one snapshot and nothing can be written, safe next
to running relay workers. A database without a blindrelay schema, or with a newer
one, is refused in one line (inspection never creates or upgrades anything).

Not here: the schema (``schema``), the SQLite report.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from .. import StoreError, redact
from .schema import SCHEMA_VERSION, newer_schema, schema_version
from .sync import SyncConnection

CIPHERTEXT_PREFIX_BYTES = 8
"""Bytes of each envelope body shown; enough to see it is random-looking."""


def inspect_database(url: str, limit: int = 50) -> Iterator[str]:
    """Lines of the report; at most ``limit`` rows per listed table (a negative limit:
    all, as SQLite's ``LIMIT -1``). Everything is read before the first line is
    returned, and the connection closed; :class:`StoreError` (one line) on failure."""
    connection = SyncConnection.open(url)
    try:
        lines = connection.run(lambda conn: _report(conn, url, None if limit < 0 else limit))
    finally:
        connection.close()
    return iter(lines)


async def _report(conn: Any, url: str, limit: int | None) -> list[str]:
    lines = [f"database {redact(url)}"]
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await schema_version(conn)
        if not version:
            raise StoreError(
                f"no blindrelay store in {redact(url)} (no schema_version): "
                "name the database a relay uses"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(str(newer_schema(version, redact(url))))
        lines += await _tables(conn)
        lines += await _relay_identity(conn)
        lines += await _accounts(conn, limit)
        lines += await _queue(conn, limit)
        lines += await _pairs(conn, limit)
        lines += await _statements(conn, limit)
        lines += await _business(conn, limit)
    return lines


async def _count(conn: Any, table: str) -> int:
    quoted = '"' + table.replace('"', '""') + '"'
    return int(await conn.fetchval(f"SELECT count(*) FROM {quoted}"))  # noqa: S608 - an identifier


async def _tables(conn: Any) -> list[str]:
    """Every table of the schema the connection uses, in the order they were created."""
    names = await conn.fetch(
        "SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p')"
        " AND c.relnamespace = current_schema()::regnamespace ORDER BY c.oid"
    )
    lines = ["tables:"]
    for (name,) in names:
        lines.append(f"  {name:<20} {await _count(conn, name):>8} rows")
    return lines


async def _relay_identity(conn: Any) -> list[str]:
    public = await conn.fetchval("SELECT public_key FROM relay_identity")
    if public is None:
        return []
    return [f"relay key {bytes(public).hex()} (private seed stored, not shown)"]


async def _accounts(conn: Any, limit: int | None) -> list[str]:
    lines = ["accounts (handle, kind, identity key prefix, signed prekey, one-time prekeys):"]
    for handle, kind, key, signed, one_time in await conn.fetch(
        "SELECT a.handle, a.kind, a.identity_key,"
        " EXISTS (SELECT 1 FROM signed_prekeys s WHERE s.handle = a.handle),"
        " (SELECT count(*) FROM one_time_prekeys o WHERE o.handle = a.handle)"
        ' FROM accounts a ORDER BY a.handle COLLATE "C" LIMIT $1',
        limit,
    ):
        lines.append(
            f"  {handle:<32} {kind:<8} {bytes(key)[:4].hex()}… "
            f"signed={'yes' if signed else 'no'} one_time={one_time}"
        )
    return lines


async def _queue(conn: Any, limit: int | None) -> list[str]:
    total = await _count(conn, "queue")
    lines = [
        f"queued envelopes ({total}; metadata and first {CIPHERTEXT_PREFIX_BYTES} bytes"
        " of ciphertext):"
    ]
    rows = await conn.fetch(
        "SELECT delivery_id, sender, recipient, intent, category,"
        " array_to_string(categories, ','), sent_at, length(body), substr(body, 1, $1)"
        " FROM queue ORDER BY delivery_id LIMIT $2",
        CIPHERTEXT_PREFIX_BYTES,
        limit,
    )
    for delivery_id, sender, recipient, intent, category, categories, sent_at, size, head in rows:
        label = (
            intent + (f"/{category}" if category else "") + (f"/{categories}" if categories else "")
        )
        lines.append(
            f"  #{delivery_id} {sender} → {recipient} {label} {_when(sent_at)}"
            f" {size} bytes {bytes(head).hex()}…"
        )
    if total > len(rows):
        lines.append(f"  … {total - len(rows)} more")
    return lines


def _when(ms: int) -> str:
    return f"{datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"


async def _pairs(conn: Any, limit: int | None) -> list[str]:
    lines = [
        f"pairs ({await _count(conn, 'pairs')}; consent, pending request, window end,"
        " blockers, who wrote, message requests):"
    ]
    for low, high, consent, pending, window_until, blockers, wrote, requests in await conn.fetch(
        "SELECT low, high, consent, pending, window_until, blockers, wrote, requests FROM pairs"
        ' ORDER BY low COLLATE "C", high COLLATE "C" LIMIT $1',
        limit,
    ):
        window = _when(window_until) if window_until else "-"
        lines.append(
            f"  {low} ↔ {high} consent={consent} pending={pending or '-'}"
            f" window_until={window} blockers={blockers or '-'} wrote={wrote or '-'}"
            f" requests={requests}"
        )
    return lines


async def _statements(conn: Any, limit: int | None) -> list[str]:
    lines = [f"statements ({await _count(conn, 'statements')}; metadata, * = in force):"]
    for seq, signer, target, action, categories, issued_at, in_force in await conn.fetch(
        "SELECT s.seq, s.signer, s.target, s.action, s.categories, s.issued_at,"
        " EXISTS (SELECT 1 FROM statements_in_force f WHERE f.seq = s.seq)"
        " FROM statements s ORDER BY s.seq LIMIT $1",
        limit,
    ):
        label = action + (f"/{categories}" if categories else "")
        lines.append(
            f"  {'*' if in_force else ' '}#{seq} {signer} → {target} {label} {_when(issued_at)}"
        )
    return lines


async def _business(conn: Any, limit: int | None) -> list[str]:
    lines = ["profiles (handle, signed size, updated):"]
    for handle, size, updated_at in await conn.fetch(
        'SELECT handle, length(signed), updated_at FROM profiles ORDER BY handle COLLATE "C"'
        " LIMIT $1",
        limit,
    ):
        lines.append(f"  {handle} {size} bytes {_when(updated_at)}")
    lines.append("badges (serial, handle, display name, expires, revoked):")
    for serial, handle, name, expires_at, revoked_at in await conn.fetch(
        "SELECT serial, handle, display_name, expires_at, revoked_at FROM badges"
        " ORDER BY issued_at, serial LIMIT $1",
        limit,
    ):
        revoked = _when(revoked_at) if revoked_at is not None else "no"
        lines.append(f"  {serial} {handle} {name!r} expires={_when(expires_at)} revoked={revoked}")
    lines.append("usage (business, month, meter, category, count):")
    for business, month, meter, category, count in await conn.fetch(
        "SELECT business, month, meter, category, count FROM usage"
        ' ORDER BY business COLLATE "C", month COLLATE "C", meter COLLATE "C",'
        ' category COLLATE "C" LIMIT $1',
        limit,
    ):
        lines.append(f"  {business} {month} {meter}{'/' + category if category else ''} {count}")
    return lines
