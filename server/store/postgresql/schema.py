"""The PostgreSQL back end's tables, and the versioned migrations that make them.

The tables mirror the SQLite back end's (``..sqlite.tables`` says what each holds,
SPEC §11 lists them), with what several workers sharing one database need besides:

- ``accounts.seq`` — a dense-enough row number for the even LOGIN lookup (SPEC §11.1),
  and ``accounts.login_seq``, raised by every ``login_counts``: the newest login of an
  account is the one with the highest number, on whatever worker it happened;
- ``queue_counts`` — one row per account: the row every operation that changes the
  account's queue or pair states locks first (``FOR UPDATE``, all of a batch's in sorted
  order), so two workers' SENDs to one recipient commit in delivery-id order and a
  pair's state is never read and written by two transactions at once — every operation
  but ACK; and ``queue_acks``, the envelopes the account's ACKs deleted. The account's
  envelopes queued (what the cap counts, statements not) are ``queued - acked``. An
  ACK only deletes rows its connection was pushed, which frees room and changes
  nothing anyone decides on under the lock; had it taken the lock, the recipient's
  worker and every worker sending to it would wait for each other's commits (schema 3);
- delivery ids from one sequence (``queue.delivery_id``): they only grow and are never
  reused, per recipient in commit order because they are drawn under that lock; the
  highest one ever queued for an account is ``queue_counts.last_id`` (schema 10), kept
  under the same lock by every insert into ``queue``.

Migrations: :data:`MIGRATIONS` maps each version to the statements that reach it from
the one before. :func:`migrate` runs under ``pg_advisory_xact_lock`` in one
transaction, so workers starting together migrate once, and refuses a database whose
``schema_version`` is newer than :data:`SCHEMA_VERSION` (an older relay on a newer
schema would misread it).

Not here: what the operations do with the tables (``batch``, ``operations``).
"""

from __future__ import annotations

import logging
from typing import Any

from ...logs import log_event
from .. import StoreStartError
from ..rules import CONSENT_WHILE_BLOCKING, by_pair, consent_as_the_block_left_it
from . import bills, transparency
from .rows import pair_key, pair_or_initial, pair_to_row

SCHEMA_VERSION = 14

MIGRATION_LOCK = 0x626C696E6472  # "blindr": one advisory lock key for every worker
"""The ``pg_advisory_xact_lock`` key migrations run under."""

_V1 = """
CREATE TABLE relay_identity (
    id integer PRIMARY KEY CHECK (id = 1),
    seed bytea NOT NULL,
    public_key bytea NOT NULL,
    created_at bigint NOT NULL
);
CREATE TABLE accounts (
    handle text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    kind text NOT NULL CHECK (kind IN ('user', 'business')),
    identity_key bytea NOT NULL,
    created_at bigint NOT NULL,
    login_seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE queue_counts (
    handle text PRIMARY KEY REFERENCES accounts (handle),
    queued integer NOT NULL DEFAULT 0
);
CREATE TABLE signed_prekeys (
    handle text PRIMARY KEY REFERENCES accounts (handle),
    key_id bigint NOT NULL,
    public_key bytea NOT NULL,
    signature bytea NOT NULL,
    uploaded_at bigint NOT NULL
);
CREATE TABLE one_time_prekeys (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handle text NOT NULL REFERENCES accounts (handle),
    key_id bigint NOT NULL,
    public_key bytea NOT NULL,
    UNIQUE (handle, key_id)
);
CREATE INDEX one_time_prekeys_by_handle ON one_time_prekeys (handle, seq);
CREATE TABLE queue (
    delivery_id bigserial PRIMARY KEY,
    recipient text NOT NULL,
    sender text NOT NULL,
    sender_kind text NOT NULL,
    msg_id bytea NOT NULL,
    intent text NOT NULL,
    category text,
    categories text[],
    sent_at bigint NOT NULL,
    body bytea NOT NULL,
    stranger boolean NOT NULL DEFAULT false
);
CREATE INDEX queue_by_recipient ON queue (recipient, delivery_id);
CREATE INDEX queue_by_age ON queue (sent_at);
CREATE INDEX queue_statements ON queue (recipient, sender) WHERE intent = 'statement';
CREATE TABLE sent (
    sender text NOT NULL,
    msg_id bytea NOT NULL,
    digest bytea NOT NULL,
    at bigint NOT NULL,
    PRIMARY KEY (sender, msg_id)
);
CREATE INDEX sent_by_age ON sent (at);
CREATE TABLE pairs (
    low text NOT NULL,
    high text NOT NULL,
    consent text NOT NULL,
    pending text NOT NULL,
    window_until bigint NOT NULL,
    blockers text NOT NULL,
    wrote text NOT NULL DEFAULT '',
    requests integer NOT NULL DEFAULT 0,
    PRIMARY KEY (low, high)
);
CREATE TABLE statements (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signer text NOT NULL,
    target text NOT NULL,
    action text NOT NULL,
    categories text,
    issued_at bigint NOT NULL,
    accepted_at bigint NOT NULL,
    nonce bytea NOT NULL,
    signed bytea NOT NULL,
    UNIQUE (signer, nonce)
);
CREATE TABLE statements_in_force (
    signer text NOT NULL,
    target text NOT NULL,
    family text NOT NULL,
    seq bigint NOT NULL REFERENCES statements (seq),
    PRIMARY KEY (signer, target, family)
);
CREATE INDEX statements_in_force_by_target ON statements_in_force (target);
CREATE INDEX statements_in_force_by_seq ON statements_in_force (seq);
CREATE TABLE statement_nonces (
    signer text NOT NULL,
    nonce bytea NOT NULL,
    kept_until bigint NOT NULL,
    PRIMARY KEY (signer, nonce)
);
CREATE INDEX statement_nonces_by_age ON statement_nonces (kept_until);
CREATE TABLE budgets (
    name text NOT NULL,
    key text NOT NULL,
    tokens double precision NOT NULL,
    at bigint NOT NULL,
    full_at bigint NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE usage (
    business text NOT NULL,
    month text NOT NULL,
    meter text NOT NULL,
    category text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (business, month, meter, category)
);
CREATE TABLE profiles (
    handle text PRIMARY KEY REFERENCES accounts (handle),
    signed bytea NOT NULL,
    updated_at bigint NOT NULL
);
CREATE TABLE badges (
    serial bigint PRIMARY KEY,
    handle text NOT NULL REFERENCES accounts (handle),
    key_fingerprint bytea NOT NULL,
    display_name text NOT NULL,
    issued_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    revoked_at bigint,
    signed bytea NOT NULL
);
CREATE INDEX badges_by_handle ON badges (handle, issued_at);
CREATE TABLE business_skeletons (
    skeleton text PRIMARY KEY,
    handle text NOT NULL REFERENCES accounts (handle)
);
CREATE TABLE invites (
    digest bytea PRIMARY KEY,
    created_at bigint NOT NULL
);
"""

_V2 = """
CREATE TABLE account_sessions (
    handle text PRIMARY KEY,
    worker text NOT NULL,
    session bigint NOT NULL,
    live boolean NOT NULL,
    ended_at bigint
);
"""
"""2: which worker serves each account's live connection (SPEC §10: per-account
limits follow the account across workers)."""

_V3 = """
ALTER TABLE queue_counts ALTER COLUMN queued TYPE bigint;
CREATE TABLE queue_acks (
    handle text PRIMARY KEY REFERENCES accounts (handle),
    acked bigint NOT NULL DEFAULT 0
);
INSERT INTO queue_acks (handle) SELECT handle FROM accounts;
"""
"""3: ACKs count apart, without the recipient's lock (module docstring); ``queued`` now
only grows with SENDs and falls with purges and withdrawals, so it is a bigint."""

_V5 = """
CREATE TABLE workers (
    worker text PRIMARY KEY,
    address text NOT NULL,
    secret bytea NOT NULL,
    started_at bigint NOT NULL
);
"""
"""5: where each worker's peer link listens, and the secret a peer proves it knows
(``routing_links``): envelopes go straight to the recipient's worker."""

_V9 = """
ALTER TABLE sent DROP CONSTRAINT sent_pkey;
ALTER TABLE sent ADD PRIMARY KEY (msg_id, sender);
"""
"""9: ``sent`` keyed ``(msg_id, sender)``, as SQLite's (schema 11): message ids that begin
with the time (SPEC §6.1.1) then add to one end of the index instead of a random page
each (a page PostgreSQL writes whole to its WAL after every checkpoint)."""

_V10 = """
ALTER TABLE queue_counts ADD COLUMN last_id bigint NOT NULL DEFAULT 0;
UPDATE queue_counts c SET last_id = m.last_id
    FROM (SELECT recipient, max(delivery_id) AS last_id FROM queue GROUP BY recipient) AS m
    WHERE c.handle = m.recipient;
"""
"""10: ``queue_counts.last_id``, the highest delivery id ever queued for the account,
written with every envelope under the account's lock. A SEND's ``previous`` (the
outbox's "was everything before it seen?", ``..outbox``) is read from it instead of
``max(delivery_id)`` over ``queue``: that table churns at the message rate, and between
two vacuums each recipient's acknowledged rows stay in its index as dead entries, which
a bitmap scan of the max visits every time — measured, a run's ``previous`` for 46
recipients with ~3,000 dead entries each took 268 ms a batch, and the soak's p99 went
to seconds until the next vacuum (docs/latency.md)."""

_V12 = """
DROP INDEX IF EXISTS statements_in_force_by_target;
CREATE INDEX IF NOT EXISTS statements_in_force_by_signer_seq ON statements_in_force (signer, seq);
CREATE INDEX IF NOT EXISTS statements_in_force_by_target_seq ON statements_in_force (target, seq);
"""
"""12: a STATEMENTS_LIST page reads its page by these, not every statement in force of
its account (found in review: 2.4-3.8 ms a page at 10,000 blocks on SQLite)."""

_V13 = """
ALTER TABLE statements_in_force ADD COLUMN IF NOT EXISTS to_target boolean NOT NULL DEFAULT true;
UPDATE statements_in_force f SET to_target = false WHERE NOT EXISTS
    (SELECT 1 FROM accounts a WHERE a.handle = f.target AND a.kind = 'business');
ALTER TABLE statements_in_force ALTER COLUMN to_target DROP DEFAULT;
DROP INDEX IF EXISTS statements_in_force_by_target_seq;
CREATE INDEX IF NOT EXISTS statements_in_force_to_target ON statements_in_force (target, seq)
    WHERE to_target;
"""
"""13: ``statements_in_force.to_target``, whether the statement was forwarded or held back
for its target when accepted (a business then), and the ``(target, seq)`` index only over
those: a business is listed no statement made before it registered (SPEC §7.6, threat
model T47). Rows already in force keep being listed to a target that is a business now
(whether it existed at acceptance is not stored; its ``created_at`` is the REGISTER's
arrival, before the proof of work, so comparing times can err); a target that is no
business now never had anything forwarded (accounts are never deleted nor change kind),
so those rows are listed to their signer only, should the handle be registered later.
No default after the upgrade: every writer says it (``.statements._record``). Idempotent,
as 12 is. As SQLite's schema 14."""

_V14 = ""
"""14: no table changes; the consent statements a relay before threat model T54's fix
accepted while their signer blocked the business are cleared, once every table exists
(:func:`clear_consent_made_while_blocking`). As SQLite's schema 15."""

MIGRATIONS: dict[int, str] = {
    1: _V1, 2: _V2, 3: _V3, 4: transparency.SCHEMA, 5: _V5, 6: transparency.BINDINGS_SCHEMA,
    7: transparency.TIMES_SCHEMA, 8: bills.SCHEMA, 9: _V9, 10: _V10, 11: transparency.TAGS_SCHEMA,
    12: _V12, 13: _V13, 14: _V14,
}  # fmt: skip
"""Version → the statements that reach it from the version before (0: an empty database;
empty: the version changes data only, below)."""

TABLES = (
    "relay_identity", "accounts", "queue_counts", "signed_prekeys", "one_time_prekeys",
    "queue", "sent", "pairs", "statements", "statements_in_force", "statement_nonces",
    "budgets", "usage", "profiles", "badges", "business_skeletons", "invites",
    "account_sessions", "queue_acks", *transparency.TABLES, "workers", *bills.TABLES,
)  # fmt: skip
"""Every table of the current schema but ``schema_version``, for inspection."""


def newer_schema(found: int, url: str) -> StoreStartError:
    return StoreStartError(
        f"the database at {url} has schema version {found}, newer than this relay's "
        f"{SCHEMA_VERSION}: run a relay at least as new as the one that upgraded it"
    )


async def schema_version(conn: Any) -> int | None:
    """The database's schema version, or None when it has no blindrelay schema."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return None
    version = await conn.fetchval("SELECT max(version) FROM schema_version")
    return int(version or 0)


async def migrate(conn: Any, url: str) -> int:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`, once whoever else starts
    at the same time; the version found before. Raises StoreStartError (one line) if the
    database is newer than this code."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        found = await schema_version(conn) or 0
        if found > SCHEMA_VERSION:
            raise newer_schema(found, url)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            if MIGRATIONS[version]:
                await conn.execute(MIGRATIONS[version])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        # Data for the new tables, once every table of this version exists (an append
        # writes log_times too), in the transaction of the migration.
        if found and found < 4:  # an existing database: its businesses' keys
            await transparency.log_existing_businesses(conn)
        if found and found < 7:  # an existing log: its published handles
            await transparency.rebuild_bindings(conn)
        if found and found < 11:  # its entries' times and tags (log_times made anew)
            await transparency.rebuild_times(conn)
        if found and found < 14:  # consent statements a relay before T54's fix let in
            await clear_consent_made_while_blocking(conn)
    return found


async def clear_consent_made_while_blocking(conn: Any) -> None:
    """Schema 14 (SPEC §7.4, threat model T54), as SQLite's schema 15
    (``..sqlite.schema._clear_consent_made_while_blocking`` says why): each consent
    statement a relay before the fix accepted while its signer blocked the business is
    cleared as if refused — no longer in force, its receipt withdrawn if still queued
    (statements count in no ``queue_counts``), the pair's categories as the block left
    them. In the migration's transaction, before any worker serves."""
    found = await conn.fetch(CONSENT_WHILE_BLOCKING)
    if not found:
        return
    named = by_pair(found)
    for (signer, target), (categories, blocked_at) in sorted(named.items()):
        low, high = pair_key(signer, target)
        row = await conn.fetchrow(
            "SELECT consent, pending, window_until, blockers, wrote, requests FROM pairs"
            " WHERE low = $1 AND high = $2",
            low, high,
        )  # fmt: skip
        state = consent_as_the_block_left_it(pair_or_initial(row), categories, blocked_at)
        await conn.execute(
            "UPDATE pairs SET consent = $3, pending = $4, window_until = $5, blockers = $6,"
            " wrote = $7, requests = $8 WHERE low = $1 AND high = $2",
            low, high, *pair_to_row(state),
        )  # fmt: skip
    await conn.execute(
        "DELETE FROM statements_in_force f USING unnest($1::text[], $2::text[], $3::text[])"
        " AS c (signer, target, family)"
        " WHERE f.signer = c.signer AND f.target = c.target AND f.family = c.family",
        [row[0] for row in found], [row[1] for row in found], [row[2] for row in found],
    )  # fmt: skip
    # Every family of a statement made while blocking was cleared: it goes whole.
    withdrawn = await conn.fetchval(
        "WITH s AS (DELETE FROM statements WHERE seq = ANY($1::bigint[]) AND NOT EXISTS"
        "  (SELECT 1 FROM statements_in_force f WHERE f.seq = statements.seq)"
        "  RETURNING signer, target, nonce),"
        " q AS (DELETE FROM queue USING s WHERE queue.recipient = s.target"
        "  AND queue.sender = s.signer AND queue.intent = 'statement'"
        "  AND queue.msg_id = s.nonce RETURNING 1)"
        " SELECT count(*) FROM q",
        sorted({int(row[3]) for row in found}),
    )
    log_event(
        logging.INFO, "schema_upgraded", table="statements_in_force", rows=len(found),
        receipts=int(withdrawn), version=14,
    )  # fmt: skip
