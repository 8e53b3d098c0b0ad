"""The reads several PostgreSQL operations make, set-based and alone alike.

Why a module: the operations run alone (``operations``, ``statements``) and the
set-based groups (``batch``, ``sends``) read pairs, accounts, prekey ids and budgets the
same way; here once, each with the SPEC rule it serves.

Not here: the operations themselves, the schema (``schema``).
"""

from __future__ import annotations

import zlib
from typing import Any

from blindrelay.protocol.consent import PairState, Request
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.errors import InvalidPrekeys

from ..records import Account
from ..rules import bucket_full_at, bucket_tokens, budget_wait_ms, needs_badge
from .rows import pair_key, pair_or_initial
from .tx import Tx

PAIR_COLUMNS = "consent, pending, window_until, blockers, wrote, requests"

_PAIR_AND_RECIPIENT = (
    f"SELECT (SELECT row({PAIR_COLUMNS}) FROM pairs WHERE low = $1 AND high = $2),"  # noqa: S608 - constant columns
    " (SELECT row(handle, kind, identity_key) FROM accounts WHERE handle = $3),"
    " (SELECT array_agg(row(g.key_fingerprint, a.identity_key, g.expires_at))"
    "  FROM badges g JOIN accounts a ON a.handle = g.handle"
    "  WHERE $4 AND g.handle = $5 AND g.revoked_at IS NULL)"
)


def verified_by(badges: Any, now: int) -> bool:
    """Whether one of (key fingerprint, current identity key, expires at) rows of a
    business's unrevoked badges is in force for its current key (SPEC §7.3, §8.1)."""
    return any(
        bytes(fingerprint) == key_fingerprint(bytes(identity_key)) and now < expires_at
        for fingerprint, identity_key, expires_at in badges or ()
    )


async def pair_and_recipient(
    tx: Tx, sender: str, sender_kind: str, to: str, request: Request, now: int
) -> tuple[PairState, Account | None, bool]:
    """SPEC §7.3: the pair's state, the recipient, and whether the sender holds a badge
    in force (read only where :func:`..rules.needs_badge`) — one statement, the pair
    state read whatever the recipient (SPEC §7.7: the same work for an unknown one)."""
    badge = needs_badge(sender_kind, request)
    pair, recipient, badges = await tx.conn.fetchrow(
        _PAIR_AND_RECIPIENT, *pair_key(sender, to), to, badge, sender
    )
    account = Account(recipient[0], recipient[1], bytes(recipient[2])) if recipient else None
    return pair_or_initial(pair), account, badge and verified_by(badges, now)


async def accounts(conn: Any, handles: list[str]) -> dict[str, Account]:
    rows = await conn.fetch(
        "SELECT handle, kind, identity_key FROM accounts WHERE handle = ANY($1::text[])", handles
    )
    return {row[0]: Account(row[0], row[1], bytes(row[2])) for row in rows}


EVEN_ACCOUNTS = (
    # Per handle: its row if it exists, else the first row from a decoy position chosen
    # by the handle (crc32 modulo the largest seq) — both cases read the handle index,
    # the largest seq and one row by seq (SPEC §11.1), and only the comparison differs.
    "SELECT k.i, a.handle, a.kind, a.identity_key"
    " FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS k(h, decoy, i)"
    " CROSS JOIN LATERAL (SELECT handle, kind, identity_key FROM accounts"
    "  WHERE seq >= (SELECT CASE WHEN hit.seq IS NULL THEN k.decoy % top.m + 1 ELSE hit.seq END"
    "   FROM (SELECT max(seq) AS m FROM accounts) AS top"
    "   LEFT JOIN (SELECT seq FROM accounts WHERE handle = k.h) AS hit ON true)"
    "  ORDER BY seq LIMIT 1) AS a"
)


async def accounts_evenly(conn: Any, handles: list[str]) -> list[Account | None]:
    """:func:`accounts` with the same work whether each handle exists or not (SPEC §11.1),
    for LOGIN and PROFILE_FETCH."""
    rows = await conn.fetch(EVEN_ACCOUNTS, handles, [zlib.crc32(h.encode()) for h in handles])
    found: list[Account | None] = [None] * len(handles)
    for index, handle, kind, identity_key in rows:
        account = Account(handles[index - 1], kind, bytes(identity_key))
        found[index - 1] = account if handle == handles[index - 1] else None
    return found


def check_upload(stored: set[int], key_ids: list[int], max_stored: int) -> None:
    """SPEC §5.2, as ``..sqlite.tables.PreKeyStore.check_upload``."""
    if len(stored) + len(key_ids) > max_stored:
        raise InvalidPrekeys(f"more than {max_stored} one-time prekeys stored")
    if not stored.isdisjoint(key_ids):
        raise InvalidPrekeys("one-time prekey id already stored")


async def stored_key_ids(conn: Any, handles: list[str]) -> dict[str, set[int]]:
    rows = await conn.fetch(
        "SELECT handle, key_id FROM one_time_prekeys WHERE handle = ANY($1::text[])", handles
    )
    stored: dict[str, set[int]] = {h: set() for h in handles}
    for handle, key_id in rows:
        stored[handle].add(int(key_id))
    return stored


async def budget_tokens(
    conn: Any, name: str, key: str, rate_per_h: float, burst: int, now: int
) -> float:
    row = await conn.fetchrow(
        "SELECT tokens, at FROM budgets WHERE name = $1 AND key = $2", name, key
    )
    stored = (float(row[0]), int(row[1])) if row is not None else None
    return bucket_tokens(stored, rate_per_h, burst, now)


async def store_budget(
    conn: Any, name: str, key: str, tokens: float, rate_per_h: float, burst: int, now: int
) -> None:
    await conn.execute(
        "INSERT INTO budgets (name, key, tokens, at, full_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (name, key) DO UPDATE SET tokens = excluded.tokens, at = excluded.at,"
        " full_at = excluded.full_at",
        name, key, tokens, now, bucket_full_at(tokens, rate_per_h, burst, now),
    )  # fmt: skip


async def spend_budget(
    conn: Any, name: str, key: str, rate_per_h: float, burst: int, now: int
) -> int:
    """0 with a token of ``key``'s budget ``name`` spent, else the wait for one (nothing
    written). The caller holds what serialises the key: :func:`lock_budget`, or the
    account's own row lock."""
    tokens = await budget_tokens(conn, name, key, rate_per_h, burst, now)
    if tokens < 1.0:
        return budget_wait_ms(tokens, rate_per_h)
    await store_budget(conn, name, key, tokens - 1.0, rate_per_h, burst, now)
    return 0


async def lock_budget(conn: Any, name: str, key: str) -> None:
    """Budgets not keyed by a locked account (a source address): an advisory lock,
    two 32-bit keys, apart from the migration lock's 64-bit key space."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", name, key)
