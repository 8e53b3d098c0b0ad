"""The operations of :data:`..operations.CONTRACT` that run one call at a time.

Everything but SEND, ACK, PAGE and the loop's reads (which ``batch`` runs set-based
for a whole batch): rare enough that one or a few statements per call cost nothing
that matters. Each is an ``async`` function over a :class:`.tx.Tx` and the contract's
plain values, deciding with the same :mod:`..rules` as the SQLite back end's
``jobs`` in the same order, so the two refuse alike. Those that write run inside a
savepoint (:data:`WRITES`), so a refusal after a write undoes it; most still decide
before writing.

Cross-worker atomicity: every row an operation reads and then writes on behalf of an
account is guarded by that account's ``queue_counts`` row, which the batch locks
before any operation runs (``batch.lock_set``); budgets not keyed by an account
take an advisory lock; one-time prekeys are claimed with ``FOR UPDATE SKIP LOCKED``.
An account's envelopes queued are ``queue_counts.queued - queue_acks.acked`` (``schema``).

Not here: the reads these share with the batch (``reads``), the consent statements'
operations (``statements``), the set-based operations and the batch (``batch``), the
schema (``schema``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.consent import Request
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.errors import (
    AuthenticationFailed,
    HandleTaken,
    InvalidPrekeys,
    InvalidProfile,
    NotFound,
    RecipientUnavailable,
    RegistrationRefused,
    StaleStatement,
)
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.skeleton import leading_skeletons, skeleton

from ...routing import HintKind
from .. import transparency
from ..records import MonthUsage, usage_by_month, usage_query
from ..rules import (
    BUDGETS,
    ONE_TIME_PREKEYS,
    judge,
    refuse_unless_allowed,
)
from . import bills, statements
from . import transparency as log
from .reads import (
    accounts,
    accounts_evenly,
    budget_tokens,
    check_upload,
    lock_budget,
    pair_and_recipient,
    spend_budget,
    store_budget,
    stored_key_ids,
)
from .tx import Tx

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
    return await spend_budget(tx.conn, name, key, rate_per_h, burst, now)


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


async def login_counts(
    tx: Tx, handle: str, not_before: int, identity_key: bytes | None = None
) -> list[Any]:
    """[queued, one-time prekeys, has signed prekey, login sequence]: the account's
    login sequence goes up by one, and a LOGIN hint tells the other workers. AUTH_FAILED
    if the account's key is no longer ``identity_key``, the one the LOGIN proved.
    ``queued`` is counted as the SQLite store's (``MessageQueue.count``, T82): the cap's
    count, plus the statements, less the oldest envelopes past ``$2``."""
    queued, one_time, signed, login_seq = await tx.conn.fetchrow(
        "WITH l AS (UPDATE accounts SET login_seq = login_seq + 1 WHERE handle = $1"
        " AND ($3::bytea IS NULL OR identity_key = $3) RETURNING login_seq)"
        " SELECT (SELECT c.queued - k.acked FROM queue_counts c, queue_acks k"
        "  WHERE c.handle = $1 AND k.handle = $1)"
        " + (SELECT count(*) FROM queue WHERE recipient = $1 AND intent = 'statement'"
        "  AND sent_at >= $2)"
        " - (SELECT count(*) FROM queue WHERE recipient = $1 AND intent <> 'statement'"
        "  AND delivery_id < coalesce((SELECT delivery_id FROM queue WHERE recipient = $1"
        "  AND intent <> 'statement' AND sent_at >= $2 ORDER BY delivery_id LIMIT 1),"
        "  1::bigint << 62)),"
        " (SELECT count(*) FROM one_time_prekeys WHERE handle = $1),"
        " EXISTS (SELECT 1 FROM signed_prekeys WHERE handle = $1),"
        " (SELECT login_seq FROM l)",
        handle, not_before, identity_key,
    )  # fmt: skip
    login_seq = int(login_seq or 0)
    if identity_key is not None and not login_seq:
        raise AuthenticationFailed("the key was rotated since the login was verified")
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


async def rotate_identity(
    tx: Tx, handle: str, old_key: bytes, new_key: bytes, now: int, login_seq: int | None = None
) -> None:
    """Compare-and-swap of the key (and, with ``login_seq``, of the account's newest
    login: SPEC §3.4), and the old key's prekeys and profile deleted, in one statement;
    a published account's new key logged (SPEC §15.1, §15.6)."""
    kind = await tx.conn.fetchval(
        "WITH u AS (UPDATE accounts SET identity_key = $3 WHERE handle = $1"
        " AND identity_key = $2 AND ($4::bigint IS NULL OR login_seq = $4)"
        " RETURNING handle, kind),"
        " s AS (DELETE FROM signed_prekeys WHERE handle IN (SELECT handle FROM u)),"
        " o AS (DELETE FROM one_time_prekeys WHERE handle IN (SELECT handle FROM u)),"
        " p AS (DELETE FROM profiles WHERE handle IN (SELECT handle FROM u))"
        " SELECT kind FROM u",
        handle, old_key, new_key, login_seq,
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
    query = usage_query(business, month, lambda n: f"${n}")
    given = [value for value in (business, month) if value is not None]
    return usage_by_month(await conn.fetch(query, *given))


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
        put_profile, fetch_profile, usage_month, purge, checkpoint,
    )
} | statements.OPERATIONS | log.OPERATIONS | bills.OPERATIONS  # fmt: skip
"""The operations run one call at a time (``batch`` runs send, acknowledge, page)."""

WRITES = frozenset(
    {"create_relay_seed", "take_budget", "create_account", "login_counts", "open_session",
     "close_session", "rotate_identity",
     "upload_prekeys", "take_bundle", "put_profile", "purge"}
) | statements.WRITES | log.WRITES | bills.WRITES  # fmt: skip
"""Those that write: each runs in a savepoint, undone alone if it fails."""
