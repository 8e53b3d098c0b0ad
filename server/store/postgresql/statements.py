"""The PostgreSQL back end's operations on consent statements (SPEC §7.4–7.6).

Why apart from ``operations``: a statement is the one operation that changes a pair's
consent, withdraws what is queued and forwards a receipt, all in one call; it reads as
a whole, beside its SQLite twin (``..sqlite.jobs.apply_statement``), with the same
:mod:`..rules` in the same order. Run as the other operations alone: :data:`OPERATIONS`
joins ``operations.OPERATIONS``, and it writes (:data:`WRITES`: in a savepoint).

Not here: checking the signature and the statement's freshness on the loop
(``..statements``), the ledger's rules (``..rules``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.errors import StaleStatement
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.signed import Action, ConsentStatement, unverified_body

from ... import routing
from ...routing import HintKind
from .. import transparency
from ..rules import (
    STATEMENT_NONCE_KEEP_MS,
    STATEMENTS,
    check_block_targets,
    check_statement,
    families,
    revokes_on_unblock,
    statement_effect,
)
from . import transparency as log
from .reads import PAIR_COLUMNS, accounts, spend_budget
from .rows import QUEUE_COLUMNS, envelope_row, pair_key, pair_or_initial, pair_to_row
from .tx import Tx


async def _withdraw(
    conn: Any, recipient: str, sender: str, intent_filter: str, *args: Any
) -> list[int]:
    """Delete ``recipient``'s queued rows from ``sender`` matching ``intent_filter``
    ($3 … in ``args``); its envelope count goes down by the envelopes among them."""
    rows = await conn.fetch(
        "WITH d AS (DELETE FROM queue WHERE recipient = $1 AND sender = $2 AND "  # noqa: S608
        + intent_filter
        + " RETURNING delivery_id, intent),"
        " c AS (UPDATE queue_counts SET queued = queued - (SELECT count(*) FROM d"
        "  WHERE intent <> 'statement') WHERE handle = $1"
        "  AND EXISTS (SELECT 1 FROM d WHERE intent <> 'statement'))"
        " SELECT delivery_id FROM d",
        recipient, sender, *args,
    )  # fmt: skip
    return sorted(int(row[0]) for row in rows)


async def apply_statement(
    tx: Tx,
    handle: str,
    signed: bytes,
    now: int,
    cooldown_ms: int,
    max_block_targets: int = limits.MAX_BLOCK_TARGETS,
    statement_budget: list[Any] | None = None,
    delivery_id: int | None = None,
) -> list[Any] | int:
    """SPEC §7.4–7.5, as the SQLite back end's ``apply_statement`` (``delivery_id`` is never
    given: PostgreSQL numbers deliveries itself, §6.4.6); hints: WITHDRAWN for
    the signer's purged rows and the target's superseded receipts, QUEUED for a
    forwarded one. The signer's statement budget is read and spent under its lock
    (``batch._locked_by``), so every worker spends the one budget (SPEC §10, T64)."""
    if delivery_id is not None:
        raise ValueError("apply_statement: a delivery id")
    conn = tx.conn
    statement = unverified_body(ConsentStatement, signed)
    target_handle = statement.target
    found = await accounts(conn, [handle, target_handle])
    signer, target = found.get(handle), found.get(target_handle)
    check_statement(statement, signer, target)
    assert signer is not None
    seen = await conn.fetchval(
        "SELECT 1 FROM statement_nonces WHERE signer = $1 AND nonce = $2", handle, statement.nonce
    )
    if seen is not None:
        raise StaleStatement("nonce: statement seen before")
    if statement.action == Action.BLOCK:
        known, count = await conn.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM statements_in_force WHERE signer = $1"
            " AND target = $2 AND family = 'block'),"
            " (SELECT count(*) FROM statements_in_force WHERE signer = $1 AND family = 'block')",
            handle, target_handle,
        )  # fmt: skip
        check_block_targets(None if known else int(count), max_block_targets)
    pair = await conn.fetchval(
        f"SELECT row({PAIR_COLUMNS}) FROM pairs WHERE low = $1 AND high = $2",  # noqa: S608
        *pair_key(handle, target_handle),
    )
    # An unblock goes where its block went (SPEC §7.5, T47): read before it supersedes it,
    # under the signer's lock (``batch._locked_by``), as every statement of the pair.
    block_to_target = statement.action == Action.UNBLOCK and bool(
        await conn.fetchval(
            "SELECT to_target FROM statements_in_force WHERE signer = $1 AND target = $2"
            " AND family = 'block'",
            handle,
            target_handle,
        )
    )
    target_kind = target.kind if target is not None else None
    # Its revocation deferred to now, from the registration (SPEC §7.4, T57).
    registered_at = None
    if revokes_on_unblock(statement, signer.kind, target_kind, block_to_target):
        registered_at = await conn.fetchval(
            "SELECT created_at FROM accounts WHERE handle = $1", target_handle
        )
    effect = statement_effect(
        statement, signer.kind, target_kind, pair_or_initial(pair), now, cooldown_ms,
        block_to_target=block_to_target, target_registered_at=registered_at,
    )  # fmt: skip
    if statement_budget is not None:
        rate_per_h, burst = statement_budget
        wait = await spend_budget(conn, STATEMENTS, handle, rate_per_h, burst, now)
        if wait:
            return wait  # nothing written: 402 (SPEC §10)
    await conn.execute(
        "INSERT INTO pairs (low, high, consent, pending, window_until, blockers, wrote, requests)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (low, high) DO UPDATE SET"
        " consent = excluded.consent, pending = excluded.pending,"
        " window_until = excluded.window_until, blockers = excluded.blockers,"
        " wrote = excluded.wrote, requests = excluded.requests",
        *pair_key(handle, target_handle), *pair_to_row(effect.state),
    )  # fmt: skip
    # Listed to its target only if forwarded or held back for it now (SPEC §7.6, T47).
    superseded_nonces = await _record(conn, statement, signed, now, effect.to_target)
    await log.append_one(conn, transparency.statement_logged(signed))
    purged: list[int] = []
    if effect.purge.everything_from_target:
        purged = await _withdraw(conn, handle, target_handle, "true")
    elif effect.purge.notification_categories:
        purged = await _withdraw(
            conn, handle, target_handle, "intent = 'notification' AND category = ANY($3::text[])",
            sorted(effect.purge.notification_categories),
        )  # fmt: skip
    forwarded = None
    superseded: list[int] = []
    if effect.to_target and superseded_nonces:
        superseded = await _withdraw(
            conn, target_handle, handle, "intent = 'statement' AND msg_id = ANY($3::bytea[])",
            superseded_nonces,
        )  # fmt: skip
    if effect.forward:
        # The target's last_id too (schema 10): a later SEND's ``previous`` must cover it.
        row = await conn.fetchrow(
            "WITH i AS (INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent,"  # noqa: S608 - constant columns
            " category, categories, sent_at, body)"
            " VALUES ($1, $2, $3, $4, 'statement', NULL, NULL, $5, $6)"
            f" RETURNING {QUEUE_COLUMNS}),"
            " c AS (UPDATE queue_counts SET last_id = (SELECT delivery_id FROM i)"
            "  WHERE handle = $1)"
            f" SELECT {QUEUE_COLUMNS} FROM i",
            target_handle, handle, signer.kind, statement.nonce, now, signed,
        )  # fmt: skip
        forwarded = envelope_row(row)
        tx.hint(HintKind.QUEUED, target_handle)
    if purged:
        tx.hints.append(routing.withdrawn(handle, tx.origin, purged))
    if superseded:
        tx.hints.append(routing.withdrawn(target_handle, tx.origin, superseded))
    return [purged, forwarded, superseded]


async def _record(
    conn: Any, statement: ConsentStatement, signed: bytes, now: int, to_target: bool
) -> list[bytes]:
    """As ``..sqlite.ledger.ConsentLedger.record``: the nonce remembered, the statement
    stored and in force for its families (``to_target``: listed to its target too),
    those it supersedes deleted; their nonces."""
    signer, target = statement.signer, statement.target
    own = families(statement)
    rows = await conn.fetch(
        "WITH n AS (INSERT INTO statement_nonces (signer, nonce, kept_until)"
        "  VALUES ($1, $3, $4)),"
        " before AS (SELECT seq FROM statements_in_force"
        "  WHERE signer = $1 AND target = $2 AND family = ANY($5::text[])),"
        " s AS (INSERT INTO statements (signer, target, action, categories, issued_at,"
        "  accepted_at, nonce, signed) VALUES ($1, $2, $6, $7, $8, $9, $3, $10) RETURNING seq),"
        " f AS (INSERT INTO statements_in_force (signer, target, family, seq, to_target)"
        "  SELECT $1, $2, family, (SELECT seq FROM s), $11 FROM unnest($5::text[]) AS family"
        "  ON CONFLICT (signer, target, family) DO UPDATE SET seq = excluded.seq,"
        "  to_target = excluded.to_target)"
        " SELECT DISTINCT seq FROM before",
        signer, target, statement.nonce, now + STATEMENT_NONCE_KEEP_MS, own, statement.action,
        ",".join(statement.categories) if statement.categories else None,
        statement.issued_at, now, signed, to_target,
    )  # fmt: skip
    if not rows:
        return []
    # In force still for a family this statement does not name (a grant of both
    # categories outlives a revoke of one): kept. This statement sees the rows above.
    deleted = await conn.fetch(
        "DELETE FROM statements WHERE seq = ANY($3::bigint[]) AND NOT EXISTS (SELECT 1"
        " FROM statements_in_force f WHERE f.signer = $1 AND f.target = $2"
        " AND f.seq = statements.seq) RETURNING seq, nonce",
        signer, target, [int(row[0]) for row in rows],
    )  # fmt: skip
    return [bytes(row[1]) for row in sorted(deleted, key=lambda row: int(row[0]))]


async def statements_in_force(tx: Tx, handle: str, after: int, limit: int) -> list[Any]:
    """SPEC §7.6: oldest first; for a business also those about it that were forwarded
    or held back for it (``to_target``: not a block made before it registered, nor the
    unblock lifting one, T47)."""
    conn = tx.conn
    account = (await accounts(conn, [handle])).get(handle)
    targeted = account is not None and account.kind == AccountKind.BUSINESS
    # Each side's first page after the cursor, by its (signer, seq) or (target, seq)
    # index, then the first page of both: a page's cost does not grow with what is in
    # force (schema 12; found in review). The target's side reads only what is listed to
    # it (schema 13's partial index).
    rows = await conn.fetch(
        "SELECT seq, signed FROM statements WHERE seq IN ("
        " (SELECT seq FROM statements_in_force WHERE signer = $2 AND seq > $1"
        "  ORDER BY seq LIMIT $4)"
        " UNION (SELECT seq FROM statements_in_force WHERE $3 AND target = $2 AND to_target"
        "  AND seq > $1"
        "  ORDER BY seq LIMIT $4))"
        " ORDER BY seq LIMIT $4",
        after, handle, targeted, limit + 1,
    )  # fmt: skip
    page = rows[:limit]
    more = len(rows) > limit
    return [[bytes(row[1]) for row in page], int(page[-1][0]) if more else None]


OPERATIONS: dict[str, Callable[..., Awaitable[Any]]] = {
    "apply_statement": apply_statement,
    "statements_in_force": statements_in_force,
}
"""Merged into ``operations.OPERATIONS``."""

WRITES = frozenset({"apply_statement"})
"""Those that write (each runs in a savepoint)."""
