"""``blindrelay inspect --store postgresql://…``: what a relay's PostgreSQL database holds.

The same report as the SQLite back end's (``..sqlite.inspection``): every table with
its row count, the relay key (never the seed), accounts with their prekey counts,
queued envelopes as metadata and a short hex prefix of their ciphertext, pair states,
statements, profiles, badges and usage — never a signature or signed body. Read-only,
in one ``REPEATABLE READ READ ONLY`` transaction (one consistent snapshot), safe next to
live workers.

Not here: the schema (``schema``), the SQLite report.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from .blocking import BlockingConnection
from .schema import TABLES
from .store import check_schema, redact

CIPHERTEXT_PREFIX_BYTES = 8


def _when(ms: int) -> str:
    return f"{datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"


async def _report(conn: Any, url: str, limit: int) -> list[str]:
    await check_schema(conn, url)
    lines = [f"database {redact(url)} (PostgreSQL)", "tables:"]
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        counts = {}
        for name in ("schema_version", *TABLES):
            counts[name] = int(await conn.fetchval(f"SELECT count(*) FROM {name}"))  # noqa: S608
            lines.append(f"  {name:<20} {counts[name]:>8} rows")
        public = await conn.fetchval("SELECT public_key FROM relay_identity WHERE id = 1")
        if public is not None:
            lines.append(f"relay key {bytes(public).hex()} (private seed stored, not shown)")
        lines.append(
            "accounts (handle, kind, identity key prefix, signed prekey, one-time prekeys):"
        )
        for handle, kind, key, signed, one_time in await conn.fetch(
            "SELECT a.handle, a.kind, a.identity_key,"
            " EXISTS (SELECT 1 FROM signed_prekeys s WHERE s.handle = a.handle),"
            " (SELECT count(*) FROM one_time_prekeys o WHERE o.handle = a.handle)"
            " FROM accounts a ORDER BY a.handle LIMIT $1",
            limit,
        ):
            lines.append(
                f"  {handle:<32} {kind:<8} {bytes(key)[:4].hex()}… "
                f"signed={'yes' if signed else 'no'} one_time={one_time}"
            )
        total = counts["queue"]
        lines.append(
            f"queued envelopes ({total}; metadata and first {CIPHERTEXT_PREFIX_BYTES} bytes"
            " of ciphertext):"
        )
        rows = await conn.fetch(
            "SELECT delivery_id, sender, recipient, intent, category,"
            " array_to_string(categories, ','), sent_at, length(body), substr(body, 1, $1)"
            " FROM queue ORDER BY delivery_id LIMIT $2",
            CIPHERTEXT_PREFIX_BYTES, limit,
        )  # fmt: skip
        for delivery_id, sender, recipient, intent, category, categories, at, size, head in rows:
            label = (
                intent
                + (f"/{category}" if category else "")
                + (f"/{categories}" if categories else "")
            )
            lines.append(
                f"  #{delivery_id} {sender} → {recipient} {label} {_when(at)}"
                f" {size} bytes {bytes(head).hex()}…"
            )
        if total > len(rows):
            lines.append(f"  … {total - len(rows)} more")
        lines.append(
            f"pairs ({counts['pairs']}; consent, pending request, window end, blockers,"
            " who wrote, message requests):"
        )
        for (
            low,
            high,
            consent,
            pending,
            window_until,
            blockers,
            wrote,
            requests,
        ) in await conn.fetch(
            "SELECT low, high, consent, pending, window_until, blockers, wrote, requests"
            " FROM pairs ORDER BY low, high LIMIT $1",
            limit,
        ):
            window = _when(window_until) if window_until else "-"
            lines.append(
                f"  {low} ↔ {high} consent={consent} pending={pending or '-'}"
                f" window_until={window} blockers={blockers or '-'} wrote={wrote or '-'}"
                f" requests={requests}"
            )
        lines.append(f"statements ({counts['statements']}; metadata, * = in force):")
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
        lines.append("profiles (handle, signed size, updated):")
        for handle, size, updated_at in await conn.fetch(
            "SELECT handle, length(signed), updated_at FROM profiles ORDER BY handle LIMIT $1",
            limit,
        ):
            lines.append(f"  {handle} {size} bytes {_when(updated_at)}")
        lines.append("badges (serial, handle, display name, expires, revoked):")
        for serial, handle, name, expires_at, revoked_at in await conn.fetch(
            "SELECT serial, handle, display_name, expires_at, revoked_at FROM badges"
            " ORDER BY issued_at LIMIT $1",
            limit,
        ):
            revoked = _when(revoked_at) if revoked_at is not None else "no"
            lines.append(
                f"  {serial} {handle} {name!r} expires={_when(expires_at)} revoked={revoked}"
            )
        lines.append("usage (business, month, meter, category, count):")
        for business, month, meter, category, count in await conn.fetch(
            "SELECT business, month, meter, category, count FROM usage"
            " ORDER BY business, month, meter, category LIMIT $1",
            limit,
        ):
            meter_label = meter + (f"/{category}" if category else "")
            lines.append(f"  {business} {month} {meter_label} {count}")
    return lines


def inspect_database(url: str, limit: int = 50) -> Iterator[str]:
    """Lines of the report; at most ``limit`` rows per listed table. Everything is read
    before the first line is returned (one snapshot, then the connection is closed)."""
    blocking = BlockingConnection(url)
    try:
        lines: list[str] = blocking.run(lambda conn: _report(conn, url, limit))
    finally:
        blocking.close()
    return iter(lines)
