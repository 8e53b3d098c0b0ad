"""The operations of :data:`..operations.CONTRACT` that run one call at a time.

Everything but SEND, ACK, PAGE and the loop's reads (which ``batch`` runs set-based
for a whole batch): rare enough that one or a few statements per call cost nothing
that matters. Each is an ``async`` function over a :class:`Tx` and the contract's
plain values, deciding with the same :mod:`..rules` as the SQLite back end's
``jobs`` in the same order, so the two refuse alike. Those that write run inside a
savepoint (:data:`WRITES`), so a refusal after a write undoes it; most still decide
before writing.

Cross-worker atomicity: every row an operation reads and then writes on behalf of an
account is guarded by that account's ``queue_counts`` row, which the batch locks
before any operation runs (``batch.lock_set``); budgets not keyed by an account
take an advisory lock; one-time prekeys are claimed with ``FOR UPDATE SKIP LOCKED``.
An account's envelopes queued are ``queue_counts.queued - queue_acks.acked`` (``schema``).

Not here: the set-based operations and the batch (``batch``), the schema (``schema``).
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.consent import Meter, PairState, Request
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.errors import (
    HandleTaken,
    InvalidPrekeys,
    InvalidProfile,
    NotFound,
    RecipientUnavailable,
    RegistrationRefused,
    StaleStatement,
)
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.signed import Action, ConsentStatement, unverified_body
from blindrelay.protocol.skeleton import leading_skeletons, skeleton

from ... import routing
from ...routing import EnvelopeLinks, Hint, HintKind
from .. import transparency
from ..records import Account, MonthUsage
from ..rules import (
    BUDGETS,
    ONE_TIME_PREKEYS,
    STATEMENT_NONCE_KEEP_MS,
    bucket_full_at,
    bucket_tokens,
    budget_wait_ms,
    check_block_targets,
    check_statement,
    families,
    judge,
    needs_badge,
    refuse_unless_allowed,
    statement_effect,
)
from . import bills
from . import transparency as log
from .rows import QUEUE_COLUMNS, envelope_row, pair_key, pair_or_initial, pair_to_row


@dataclass(slots=True)
class Tx:
    """One batch's transaction: its connection, and the hints its operations emit."""

    conn: Any
    origin: str
    hints: list[Hint] = field(default_factory=list)
    links: EnvelopeLinks | None = None
    """``Store.links``: peer links to the other workers, for new envelopes."""
    linked: dict[str, list[list[Any]]] = field(default_factory=dict)
    """Worker → the envelopes its link carries once this transaction has committed."""

    def hint(self, kind: HintKind, handle: str, value: int = 0) -> None:
        self.hints.append(Hint(kind, handle, self.origin, value))


# --- reads several operations make ------------------------------------------------

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


async def lock_budget(conn: Any, name: str, key: str) -> None:
    """Budgets not keyed by a locked account (a source address): an advisory lock,
    two 32-bit keys, apart from the migration lock's 64-bit key space."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", name, key)


# --- operations ------------------------------------------------------------------


async def noop(tx: Tx) -> None:
    """A barrier: answered once everything submitted before it has committed."""


async def relay_seed(tx: Tx) -> bytes | None:
    seed = await tx.conn.fetchval("SELECT seed FROM relay_identity WHERE id = 1")
    return bytes(seed) if seed is not None else None


async def create_relay_seed(tx: Tx, seed: bytes, public: bytes, now: int) -> bytes:
    """The stored seed: ``seed`` unless another worker stored one first."""
    stored = await tx.conn.fetchval(
        "WITH i AS (INSERT INTO relay_identity (id, seed, public_key, created_at)"
        " VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING seed)"
        " SELECT seed FROM i UNION ALL SELECT seed FROM relay_identity WHERE id = 1",
        seed, public, now,
    )  # fmt: skip
    if stored is None:
        # Another worker's insert committed while ours waited on it: our statement's
        # snapshot predates that commit, so only a new statement sees its row.
        stored = await tx.conn.fetchval("SELECT seed FROM relay_identity WHERE id = 1")
    return bytes(stored)


async def take_budget(tx: Tx, name: str, key: str, rate_per_h: float, burst: int, now: int) -> int:
    """0 with a token of ``key``'s budget ``name`` spent, else the wait for one; one
    bucket for every worker (the advisory lock makes read-and-spend atomic)."""
    if name not in BUDGETS:
        raise ValueError("unknown budget")
    await lock_budget(tx.conn, name, key)
    tokens = await budget_tokens(tx.conn, name, key, rate_per_h, burst, now)
    if tokens < 1.0:
        return budget_wait_ms(tokens, rate_per_h)
    await store_budget(tx.conn, name, key, tokens - 1.0, rate_per_h, burst, now)
    return 0


async def create_account(
    tx: Tx, handle: str, kind: str, identity_key: bytes, now: int, invite: bytes | None = None
) -> None:
    """SPEC §3.2, §4.2, §4.6.4, as the SQLite back end (checks in its order); in a
    savepoint, so a refusal after the invite was consumed keeps the invite."""
    conn = tx.conn
    if invite is not None and (
        await conn.fetchval("DELETE FROM invites WHERE digest = $1 RETURNING 1", invite) is None
    ):
        raise RegistrationRefused("invite unknown or used")
    collides = await conn.fetchval(
        "SELECT 1 FROM business_skeletons WHERE skeleton = ANY($1::text[]) LIMIT 1",
        list(leading_skeletons(handle)),
    )
    if collides is not None:
        raise HandleTaken()
    created = await conn.fetchval(
        "WITH a AS (INSERT INTO accounts (handle, kind, identity_key, created_at)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (handle) DO NOTHING RETURNING handle),"
        " c AS (INSERT INTO queue_counts (handle) SELECT handle FROM a),"
        " k AS (INSERT INTO queue_acks (handle) SELECT handle FROM a)"
        " SELECT count(*) FROM a",
        handle, kind, identity_key, now,
    )  # fmt: skip
    if not created:
        raise HandleTaken()
    if kind != AccountKind.BUSINESS:
        return
    claimed = await conn.fetchval(
        "INSERT INTO business_skeletons (skeleton, handle) VALUES ($1, $2)"
        " ON CONFLICT (skeleton) DO NOTHING RETURNING 1",
        skeleton(handle), handle,
    )  # fmt: skip
    if claimed is None:
        raise HandleTaken()  # a lookalike registered on another worker meanwhile
    entry = transparency.key_binding(handle, kind, identity_key, now)
    await log.append_binding(conn, handle, entry)


async def login_counts(tx: Tx, handle: str, not_before: int) -> list[Any]:
    """[queued, one-time prekeys, has signed prekey, login sequence]: the account's
    login sequence goes up by one, and a LOGIN hint tells the other workers."""
    queued, one_time, signed, login_seq = await tx.conn.fetchrow(
        "WITH l AS (UPDATE accounts SET login_seq = login_seq + 1 WHERE handle = $1"
        " RETURNING login_seq)"
        " SELECT (SELECT count(*) FROM queue WHERE recipient = $1 AND sent_at >= $2),"
        " (SELECT count(*) FROM one_time_prekeys WHERE handle = $1),"
        " EXISTS (SELECT 1 FROM signed_prekeys WHERE handle = $1),"
        " (SELECT login_seq FROM l)",
        handle, not_before,
    )  # fmt: skip
    login_seq = int(login_seq or 0)
    if login_seq:
        tx.hint(HintKind.LOGIN, handle, login_seq)
    return [int(queued), int(one_time), bool(signed), login_seq]


async def open_session(tx: Tx, handle: str, worker: str, session: int, now: int) -> list[Any]:
    """[previous worker | None, still live, ended at | None]; records this connection.
    The row is locked by the upsert, so of two logins at once one sees the other."""
    row = await tx.conn.fetchrow(
        "WITH old AS (SELECT worker, live, ended_at FROM account_sessions WHERE handle = $1"
        " FOR UPDATE),"
        " new AS (INSERT INTO account_sessions (handle, worker, session, live, ended_at)"
        " VALUES ($1, $2, $3, true, NULL) ON CONFLICT (handle) DO UPDATE SET"
        " worker = excluded.worker, session = excluded.session, live = true)"
        " SELECT worker, live, ended_at FROM old",
        handle, worker, session,
    )  # fmt: skip
    if row is None:
        return [None, False, None]
    ended_at = row["ended_at"]
    return [row["worker"], bool(row["live"]), int(ended_at) if ended_at is not None else None]


async def login_seqs(tx: Tx, handles: list[str]) -> list[int]:
    rows = await tx.conn.fetch(
        "SELECT handle, login_seq FROM accounts WHERE handle = ANY($1::text[])", handles
    )
    seqs = {row[0]: row[1] for row in rows}
    return [int(seqs.get(handle, 0)) for handle in handles]


async def close_session(tx: Tx, handle: str, worker: str, session: int, now: int) -> None:
    await tx.conn.execute(
        "UPDATE account_sessions SET live = false, ended_at = $4"
        " WHERE handle = $1 AND worker = $2 AND session = $3 AND live",
        handle, worker, session, now,
    )  # fmt: skip


async def rotate_identity(tx: Tx, handle: str, old_key: bytes, new_key: bytes, now: int) -> None:
    """Compare-and-swap of the key, and the old key's prekeys deleted, in one statement;
    a published account's new key logged (SPEC §15.1, §15.6)."""
    kind = await tx.conn.fetchval(
        "WITH u AS (UPDATE accounts SET identity_key = $3 WHERE handle = $1"
        " AND identity_key = $2 RETURNING handle, kind),"
        " s AS (DELETE FROM signed_prekeys WHERE handle IN (SELECT handle FROM u)),"
        " o AS (DELETE FROM one_time_prekeys WHERE handle IN (SELECT handle FROM u))"
        " SELECT kind FROM u",
        handle, old_key, new_key,
    )  # fmt: skip
    if kind is None:
        raise StaleStatement()
    published = await log.bound(tx.conn, handle) is not None
    entry = transparency.key_binding(handle, kind, new_key, now, old_key, published=published)
    await log.append_binding(tx.conn, handle, entry)


async def upload_prekeys(
    tx: Tx,
    handle: str,
    identity_key: bytes,
    signed: list[Any] | None,
    one_time: list[list[Any]],
    cap: int,
    now: int,
) -> None:
    conn = tx.conn
    current = (await accounts(conn, [handle])).get(handle)
    if current is None or current.identity_key != identity_key:
        raise InvalidPrekeys("identity key rotated during upload")
    key_ids = [int(key_id) for key_id, _public in one_time]
    check_upload((await stored_key_ids(conn, [handle]))[handle], key_ids, cap)
    if signed is not None:
        key_id, public, signature = signed
        await conn.execute(
            "INSERT INTO signed_prekeys (handle, key_id, public_key, signature, uploaded_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (handle) DO UPDATE SET"
            " key_id = excluded.key_id, public_key = excluded.public_key,"
            " signature = excluded.signature, uploaded_at = excluded.uploaded_at",
            handle, key_id, public, signature, now,
        )  # fmt: skip
    if one_time:
        await conn.execute(
            "INSERT INTO one_time_prekeys (handle, key_id, public_key)"
            " SELECT $1, k, p FROM unnest($2::bigint[], $3::bytea[]) WITH ORDINALITY AS u(k, p, i)"
            " ORDER BY i",
            handle, key_ids, [bytes(public) for _key_id, public in one_time],
        )  # fmt: skip


async def take_bundle(
    tx: Tx,
    requester: str,
    requester_kind: str,
    owner: str,
    now: int,
    rate_per_h: float = limits.ONE_TIME_PREKEY_RATE_PER_H,
    burst: int = limits.ONE_TIME_PREKEY_BURST,
) -> list[Any]:
    """SPEC §5.3, §7.3: consent decided, then the oldest one-time prekey claimed —
    ``DELETE … (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1)``, so no two transactions of
    any workers ever claim one key — if the owner's budget allows."""
    conn = tx.conn
    request = Request.BUNDLE_FETCH
    state, recipient, verified = await pair_and_recipient(
        tx, requester, requester_kind, owner, request, now
    )
    kind = recipient.kind if recipient is not None else None
    refuse_unless_allowed(
        judge(requester, requester_kind, owner, kind, request, state, now, verified=verified)
    )
    row = await conn.fetchrow(
        "SELECT a.identity_key, a.kind, s.key_id, s.public_key, s.signature,"
        " EXISTS (SELECT 1 FROM one_time_prekeys WHERE handle = a.handle)"
        " FROM accounts a JOIN signed_prekeys s ON s.handle = a.handle WHERE a.handle = $1",
        owner,
    )
    if row is None:
        raise RecipientUnavailable()
    one_time = None
    if row[5]:
        tokens = await budget_tokens(conn, ONE_TIME_PREKEYS, owner, rate_per_h, burst, now)
        if tokens >= 1.0:
            claimed = await conn.fetchrow(
                "DELETE FROM one_time_prekeys WHERE seq = (SELECT seq FROM one_time_prekeys"
                " WHERE handle = $1 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " RETURNING key_id, public_key",
                owner,
            )
            if claimed is not None:
                await store_budget(
                    conn, ONE_TIME_PREKEYS, owner, tokens - 1.0, rate_per_h, burst, now
                )
                one_time = [int(claimed[0]), bytes(claimed[1])]
    remaining = int(
        await conn.fetchval("SELECT count(*) FROM one_time_prekeys WHERE handle = $1", owner)
    )
    if remaining < limits.PREKEY_LOW_WATER:
        tx.hint(HintKind.PREKEYS_LOW, owner, remaining)
    return [
        bytes(row[0]), row[1], [int(row[2]), bytes(row[3]), bytes(row[4])], one_time, remaining,
        await log.log_binding_proof(tx, owner),
    ]  # fmt: skip


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
) -> list[Any]:
    """SPEC §7.4–7.5, as the SQLite back end's ``apply_statement``; hints: WITHDRAWN for
    the signer's purged rows and the target's superseded receipts, QUEUED for a
    forwarded one."""
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
    effect = statement_effect(
        statement, signer.kind, target.kind if target is not None else None,
        pair_or_initial(pair), now, cooldown_ms,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO pairs (low, high, consent, pending, window_until, blockers, wrote, requests)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (low, high) DO UPDATE SET"
        " consent = excluded.consent, pending = excluded.pending,"
        " window_until = excluded.window_until, blockers = excluded.blockers,"
        " wrote = excluded.wrote, requests = excluded.requests",
        *pair_key(handle, target_handle), *pair_to_row(effect.state),
    )  # fmt: skip
    superseded_nonces = await _record(conn, statement, signed, now)
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
    if effect.to_business and superseded_nonces:
        superseded = await _withdraw(
            conn, target_handle, handle, "intent = 'statement' AND msg_id = ANY($3::bytea[])",
            superseded_nonces,
        )  # fmt: skip
    if effect.forward:
        row = await conn.fetchrow(
            "INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, category,"  # noqa: S608 - constant columns
            " categories, sent_at, body) VALUES ($1, $2, $3, $4, 'statement', NULL, NULL, $5, $6)"
            f" RETURNING {QUEUE_COLUMNS}",
            target_handle, handle, signer.kind, statement.nonce, now, signed,
        )  # fmt: skip
        forwarded = envelope_row(row)
        tx.hint(HintKind.QUEUED, target_handle)
    if purged:
        tx.hints.append(routing.withdrawn(handle, tx.origin, purged))
    if superseded:
        tx.hints.append(routing.withdrawn(target_handle, tx.origin, superseded))
    return [purged, forwarded, superseded]


async def _record(conn: Any, statement: ConsentStatement, signed: bytes, now: int) -> list[bytes]:
    """As ``..sqlite.ledger.ConsentLedger.record``: the nonce remembered, the statement
    stored and in force for its families, those it supersedes deleted; their nonces."""
    signer, target = statement.signer, statement.target
    own = families(statement)
    rows = await conn.fetch(
        "WITH n AS (INSERT INTO statement_nonces (signer, nonce, kept_until)"
        "  VALUES ($1, $3, $4)),"
        " before AS (SELECT seq FROM statements_in_force"
        "  WHERE signer = $1 AND target = $2 AND family = ANY($5::text[])),"
        " s AS (INSERT INTO statements (signer, target, action, categories, issued_at,"
        "  accepted_at, nonce, signed) VALUES ($1, $2, $6, $7, $8, $9, $3, $10) RETURNING seq),"
        " f AS (INSERT INTO statements_in_force (signer, target, family, seq)"
        "  SELECT $1, $2, family, (SELECT seq FROM s) FROM unnest($5::text[]) AS family"
        "  ON CONFLICT (signer, target, family) DO UPDATE SET seq = excluded.seq)"
        " SELECT DISTINCT seq FROM before",
        signer, target, statement.nonce, now + STATEMENT_NONCE_KEEP_MS, own, statement.action,
        ",".join(statement.categories) if statement.categories else None,
        statement.issued_at, now, signed,
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
    """SPEC §7.6: oldest first; for a business also those about it (forwarded to it)."""
    conn = tx.conn
    account = (await accounts(conn, [handle])).get(handle)
    targeted = account is not None and account.kind == AccountKind.BUSINESS
    rows = await conn.fetch(
        "SELECT seq, signed FROM statements WHERE seq > $1 AND seq IN ("
        " SELECT seq FROM statements_in_force WHERE signer = $2"
        " UNION SELECT seq FROM statements_in_force WHERE $3 AND target = $2)"
        " ORDER BY seq LIMIT $4",
        after, handle, targeted, limit + 1,
    )  # fmt: skip
    page = rows[:limit]
    more = len(rows) > limit
    return [[bytes(row[1]) for row in page], int(page[-1][0]) if more else None]


async def put_profile(tx: Tx, handle: str, identity_key: bytes, profile: bytes, now: int) -> None:
    stored = await tx.conn.fetchval(
        "WITH a AS (SELECT handle FROM accounts WHERE handle = $1 AND identity_key = $2)"
        " INSERT INTO profiles (handle, signed, updated_at) SELECT handle, $3, $4 FROM a"
        " ON CONFLICT (handle) DO UPDATE SET signed = excluded.signed,"
        " updated_at = excluded.updated_at RETURNING 1",
        handle, identity_key, profile, now,
    )  # fmt: skip
    if stored is None:
        raise InvalidProfile("identity key rotated")


async def fetch_profile(tx: Tx, owner: str, now: int) -> list[Any]:
    """SPEC §8.2: the same reads (the even account lookup, badge, profile) for a user
    or an unknown handle, which get the same NOT_FOUND as for a business."""
    conn = tx.conn
    [account] = await accounts_evenly(conn, [owner])
    identity_key = account.identity_key if account is not None else bytes(32)
    badge, profile = await conn.fetchrow(
        "SELECT (SELECT signed FROM badges WHERE handle = $1 AND key_fingerprint = $2"
        "  AND revoked_at IS NULL AND $3 < expires_at"
        "  ORDER BY issued_at DESC, serial DESC LIMIT 1),"
        " (SELECT signed FROM profiles WHERE handle = $1)",
        owner, key_fingerprint(identity_key), now,
    )  # fmt: skip
    if account is None or account.kind != AccountKind.BUSINESS:
        raise NotFound()
    return [
        identity_key,
        bytes(profile) if profile is not None else None,
        bytes(badge) if badge is not None else None,
    ]


async def usage_month(tx: Tx, handle: str, month: str) -> list[Any]:
    """[{category: notifications}, service replies, user-initiated]."""
    found = await usage_months(tx.conn, handle, month)
    usage = found[0] if found else MonthUsage(handle, month)
    return [usage.notifications, usage.service_replies, usage.user_initiated]


async def usage_months(conn: Any, business: str | None, month: str | None) -> list[MonthUsage]:
    """Metering counts per (business, month), optionally of one business or month (also
    ``blindrelay admin usage``'s)."""
    rows = await conn.fetch(
        "SELECT business, month, meter, category, count FROM usage"
        " WHERE ($1::text IS NULL OR business = $1) AND ($2::text IS NULL OR month = $2)"
        " ORDER BY business, month, meter, category",
        business, month,
    )  # fmt: skip
    result: dict[tuple[str, str], MonthUsage] = {}
    for name, when, meter, category, count in rows:
        usage = result.setdefault((name, when), MonthUsage(name, when))
        if meter == Meter.NOTIFICATION:
            usage.notifications[category] = int(count)
        elif meter == Meter.SERVICE_REPLY:
            usage.service_replies = int(count)
        elif meter == Meter.USER_INITIATED:
            usage.user_initiated = int(count)
    return list(result.values())


async def purge(tx: Tx, before: int, now: int) -> list[int]:
    """SPEC §6.6: expired envelopes (their recipients' counts follow) and remembered
    msg ids; nonces that cannot be replayed fresh and refilled budgets."""
    envelopes, ids = await tx.conn.fetchrow(
        "WITH d AS (DELETE FROM queue WHERE sent_at < $1 RETURNING recipient, intent),"
        " c AS (UPDATE queue_counts q SET queued = q.queued - x.n FROM (SELECT recipient,"
        "  count(*) AS n FROM d WHERE intent <> 'statement' GROUP BY recipient) AS x"
        "  WHERE q.handle = x.recipient),"
        " s AS (DELETE FROM sent WHERE at < $1 RETURNING 1),"
        " n AS (DELETE FROM statement_nonces WHERE kept_until < $2),"
        " b AS (DELETE FROM budgets WHERE full_at <= $2)"
        " SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM s)",
        before, now,
    )  # fmt: skip
    return [int(envelopes), int(ids)]


async def checkpoint(tx: Tx) -> None:
    """Nothing to fold: PostgreSQL recycles its WAL by itself (SPEC §11.2)."""


OPERATIONS: dict[str, Callable[..., Awaitable[Any]]] = {
    f.__name__: f
    for f in (
        noop, relay_seed, create_relay_seed, take_budget, create_account, login_counts,
        login_seqs, open_session, close_session, rotate_identity, upload_prekeys, take_bundle,
        apply_statement, statements_in_force, put_profile, fetch_profile, usage_month, purge,
        checkpoint,
    )
} | log.OPERATIONS | bills.OPERATIONS  # fmt: skip
"""The operations run one call at a time (``batch`` runs send, acknowledge, page)."""

WRITES = frozenset(
    {"create_relay_seed", "take_budget", "create_account", "login_counts", "open_session",
     "close_session", "rotate_identity",
     "upload_prekeys", "take_bundle", "apply_statement", "put_profile", "purge"}
) | log.WRITES | bills.WRITES  # fmt: skip
"""Those that write: each runs in a savepoint, undone alone if it fails."""
