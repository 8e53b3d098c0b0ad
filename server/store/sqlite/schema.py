"""The SQLite store's schema, and the upgrades that bring an older relay's file to it.

:data:`SCHEMA` is the current schema as plain DDL (every ``CREATE … IF NOT EXISTS``);
:data:`SCHEMA_VERSION` is what ``PRAGMA user_version`` says once a file has it. A file
made by an older relay gets, in one transaction (``database.connect``): the columns added
since (:func:`add_columns`), the tables and indexes added since (the schema itself), and
what those need from the old data (:func:`migrate`). The PostgreSQL back end keeps its
own versioned migrations (``..postgresql.schema``).

Not here: opening the file (``database.connect``), the rows' meaning (``tables``).
"""

from __future__ import annotations

import logging
import sqlite3

import sqlite_utils

from blindrelay.protocol import limits
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.skeleton import skeleton

from ...logs import log_event
from .. import transparency
from ..rules import CONSENT_WHILE_BLOCKING, by_pair, consent_as_the_block_left_it
from .bills import SCHEMA as BILL_SCHEMA
from .ledger import ConsentLedger
from .transparency import SCHEMA as LOG_SCHEMA
from .transparency import TIMES_TABLE, TransparencyLog

SCHEMA_VERSION = 15
"""15: no table changed; the consent statements a relay before threat model T54's fix
accepted while their signer blocked the business are cleared (:func:`migrate`).
14: ``statements_in_force.to_target``, whether the statement was forwarded or held back
for its target when accepted (the target was a business then), and the ``(target, seq)``
index only over those: a STATEMENTS_LIST lists a business no statement made before it
registered (SPEC §7.6; :func:`migrate` says what upgraded rows get).
13: ``statements_in_force`` indexed ``(signer, seq)`` and ``(target, seq)`` in place
of ``(target)``: a STATEMENTS_LIST page reads its page, not every statement in force.
12: ``log_times`` keyed ``(at, tag, seq)`` (``..transparency.lookup_tag``), made anew
and filled from the log on upgrade: a signer could pile entries on one ``at``.
11: ``sent`` keyed ``(msg_id, sender)`` instead of ``(sender, msg_id)``, rebuilt on
upgrade (:data:`SENT_TABLE`).
10: monthly bills, ``bill_notifications``, ``bills``, ``bill_items`` (SPEC §8.5;
:mod:`.bills`): a month's bill holds the notifications metered from the upgrade on.
9: ``log_times`` in place of the ``log_leaves`` hash index (SPEC §15.6), filled from
the log on upgrade. 8: ``log_bindings`` and the ``log_leaves`` index (SPEC §15.6),
filled from the log on upgrade. 7: the transparency log, ``log_entries``, ``log_nodes``,
``log_heads`` (SPEC §15; :mod:`.transparency`), with every existing business's key
binding appended on upgrade.
6: ``accounts.login_seq``, the logins of each account counted (SPEC §1.2.3: the newest
login wins on every relay process).
5: ``account_sessions`` (which relay process serves each account, SPEC §10).
3: ``business_skeletons`` (SPEC §3.2), filled from existing businesses on upgrade,
and ``invites`` (SPEC §4.6.4). 4: ``statement_nonces`` and the pruning of superseded
statements (SPEC §7.5–7.6), ``budgets`` (SPEC §5.3, §7.3), ``pairs.wrote``/``requests``
(SPEC §7.2) and ``queue.stranger`` (SPEC §6.3)."""

SENT_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    sender TEXT NOT NULL,
    msg_id BLOB NOT NULL,
    digest BLOB NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (msg_id, sender)
) WITHOUT ROWID"""
"""Idempotence memory (SPEC §6.3.2), one row per accepted SEND for ``QUEUE_TTL_MS``.

Why ``msg_id`` first: every SEND inserts here, and an insert at a random place in a
b-tree writes a whole page to the WAL (and later the checkpoint writes it again) for one
~80-byte row. Keyed by sender first, a page per SEND was the rule whatever the ids:
1.3 of the 2.6 WAL pages a relayed message cost (issue 19). Message ids that begin with
the sender's clock (SPEC §6.1, as the SDK makes them) then land together at the end of
the tree, a batch's SENDs sharing a page; random ids cost what they cost before."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seed BLOB NOT NULL,
    public_key BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    handle TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'business')),
    identity_key BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    login_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS signed_prekeys (
    handle TEXT PRIMARY KEY REFERENCES accounts(handle),
    key_id INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL,
    uploaded_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS one_time_prekeys (
    seq INTEGER PRIMARY KEY,
    handle TEXT NOT NULL REFERENCES accounts(handle),
    key_id INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    UNIQUE (handle, key_id)
);
CREATE TABLE IF NOT EXISTS queue (
    delivery_id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_kind TEXT NOT NULL,
    msg_id BLOB NOT NULL,
    intent TEXT NOT NULL,
    category TEXT,
    categories TEXT,
    sent_at INTEGER NOT NULL,
    body BLOB NOT NULL,
    stranger INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_by_recipient ON queue (recipient, delivery_id);
CREATE INDEX IF NOT EXISTS queue_by_age ON queue (sent_at);
CREATE INDEX IF NOT EXISTS queue_statements ON queue (recipient, sender)
    WHERE intent = 'statement';
""" + SENT_TABLE.format(name="sent") + """;
CREATE INDEX IF NOT EXISTS sent_by_age ON sent (at);
CREATE TABLE IF NOT EXISTS pairs (
    low TEXT NOT NULL,
    high TEXT NOT NULL,
    consent TEXT NOT NULL,
    pending TEXT NOT NULL,
    window_until INTEGER NOT NULL,
    blockers TEXT NOT NULL,
    wrote TEXT NOT NULL DEFAULT '',
    requests INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (low, high)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statements (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    signer TEXT NOT NULL,
    target TEXT NOT NULL,
    action TEXT NOT NULL,
    categories TEXT,
    issued_at INTEGER NOT NULL,
    accepted_at INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    signed BLOB NOT NULL,
    UNIQUE (signer, nonce)
);
CREATE TABLE IF NOT EXISTS statements_in_force (
    signer TEXT NOT NULL,
    target TEXT NOT NULL,
    family TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES statements(seq),
    to_target INTEGER NOT NULL,
    PRIMARY KEY (signer, target, family)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS statements_in_force_by_signer_seq ON statements_in_force (signer, seq);
CREATE INDEX IF NOT EXISTS statements_in_force_to_target ON statements_in_force (target, seq)
    WHERE to_target = 1;
CREATE TABLE IF NOT EXISTS statement_nonces (
    signer TEXT NOT NULL,
    nonce BLOB NOT NULL,
    kept_until INTEGER NOT NULL,
    PRIMARY KEY (signer, nonce)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budgets (
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    tokens REAL NOT NULL,
    at INTEGER NOT NULL,
    full_at INTEGER NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    business TEXT NOT NULL,
    month TEXT NOT NULL,
    meter TEXT NOT NULL,
    category TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (business, month, meter, category)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profiles (
    handle TEXT PRIMARY KEY REFERENCES accounts(handle),
    signed BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS badges (
    serial INTEGER PRIMARY KEY,
    handle TEXT NOT NULL REFERENCES accounts(handle),
    key_fingerprint BLOB NOT NULL,
    display_name TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER,
    signed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS badges_by_handle ON badges (handle, issued_at);
CREATE TABLE IF NOT EXISTS business_skeletons (
    skeleton TEXT PRIMARY KEY,
    handle TEXT NOT NULL REFERENCES accounts(handle)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account_sessions (
    handle TEXT PRIMARY KEY,
    worker TEXT NOT NULL,
    session INTEGER NOT NULL,
    live INTEGER NOT NULL,
    ended_at INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invites (
    digest BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
""" + LOG_SCHEMA + BILL_SCHEMA


def statements() -> list[str]:
    return [s.strip() for s in SCHEMA.split(";") if s.strip()]


ADDED_COLUMNS = {
    "accounts": {"login_seq": "INTEGER NOT NULL DEFAULT 0"},
    "queue": {"stranger": "INTEGER NOT NULL DEFAULT 0"},
    "pairs": {
        "wrote": "TEXT NOT NULL DEFAULT ''",
        "requests": "INTEGER NOT NULL DEFAULT 0",
    },
    "statements_in_force": {"to_target": "INTEGER NOT NULL DEFAULT 1"},
}
"""Columns added to existing tables (CREATE TABLE IF NOT EXISTS does not add them).
Schema 4: who has written to whom, per pair (SPEC §7.2), and whether a queued
envelope came from a stranger (SPEC §6.3). An upgraded relay starts with nobody having
written: an existing conversation's next chat counts as a message request (or opens one)
until the other side writes again; envelopes queued before count as no stranger's.
Schema 6: every account's logins are counted from 0 (``Accounts.count_login``).
Schema 14: statements in force are listed to their target as before (:func:`migrate`
then clears it where the target is no business); a new one says it (``ConsentLedger``)."""


def add_columns(conn: sqlite3.Connection) -> None:
    """ALTER TABLE for every column an older database lacks; idempotent."""
    for table, columns in ADDED_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not have:
            continue  # the table is new: the schema creates it whole
        for name, declaration in columns.items():
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Fill what the new tables need from the data of an older schema (idempotent).

    3: the skeletons of existing businesses (SPEC §3.2). 4: replay protection moves
    to ``statement_nonces`` (seeded with every stored statement's nonce, kept
    ``2 × STATEMENT_SKEW_MS`` past its acceptance); statements no longer in force,
    and forwarded statements still queued for them, are pruned (SPEC §7.5–7.6, §11).
    14: a statement in force whose target is not a business now is listed to nobody
    but its signer, should the handle be registered later: accounts are never deleted
    and keep their kind, so none was forwarded or held back for its target. One whose
    target is a business keeps being listed to it, as before the upgrade: whether that
    business existed when the statement was accepted is not stored (its ``created_at``
    is the REGISTER's arrival, before the proof of work, so comparing times can err).
    15: :func:`_clear_consent_made_while_blocking`.
    """
    if version < 3:
        businesses = conn.execute(
            "SELECT handle FROM accounts WHERE kind = ? ORDER BY created_at, handle",
            (AccountKind.BUSINESS.value,),
        ).fetchall()
        conn.executemany(
            "INSERT OR IGNORE INTO business_skeletons (skeleton, handle) VALUES (?, ?)",
            [(skeleton(handle), handle) for (handle,) in businesses],
        )
    if 0 < version < 4:
        conn.execute(
            "INSERT OR IGNORE INTO statement_nonces (signer, nonce, kept_until)"
            " SELECT signer, nonce, accepted_at + ? FROM statements",
            (2 * limits.STATEMENT_SKEW_MS,),
        )
        conn.execute(
            "DELETE FROM statements WHERE seq NOT IN (SELECT seq FROM statements_in_force)"
        )
        conn.execute(
            "DELETE FROM queue WHERE intent = 'statement' AND NOT EXISTS (SELECT 1 FROM"
            " statements s WHERE s.signer = queue.sender AND s.nonce = queue.msg_id)"
        )
    if 0 < version < 7:
        _log_existing_businesses(conn)
    if 0 < version < 8:
        TransparencyLog(sqlite_utils.Database(conn)).rebuild_bindings()
    if 0 < version < 9:
        conn.execute("DROP INDEX IF EXISTS log_leaves")
    if 0 < version < 11:
        _rekey_sent(conn)
    if 0 < version < 13:
        conn.execute("DROP INDEX IF EXISTS statements_in_force_by_target")
    if 0 < version < 14:
        conn.execute("DROP INDEX IF EXISTS statements_in_force_by_target_seq")
        conn.execute(
            "UPDATE statements_in_force SET to_target = 0 WHERE NOT EXISTS (SELECT 1"
            " FROM accounts a WHERE a.handle = statements_in_force.target AND a.kind = ?)",
            (AccountKind.BUSINESS.value,),
        )
    if 0 < version < 15:
        _clear_consent_made_while_blocking(conn)
    if 0 < version < 12:  # log_times of schema 9-11 had no tag; before 9, none at all
        conn.execute("DROP TABLE IF EXISTS log_times")
        conn.execute(TIMES_TABLE)
        TransparencyLog(sqlite_utils.Database(conn)).rebuild_times()


def _clear_consent_made_while_blocking(conn: sqlite3.Connection) -> None:
    """Schema 15 (SPEC §7.4, threat model T54): a relay before the fix accepted a user's
    grant, deny or revoke while the user blocked the business, forwarded it and lists it —
    to a business that registered the handle after the user had blocked it too, telling
    it of a block it is never told of (T47). Each is cleared as if refused: no longer in
    force, its receipt withdrawn if still queued, the pair's categories as the block left
    them (:func:`..rules.consent_as_the_block_left_it`). One whose block has been lifted
    since is left alone: nothing tells it from a statement made after the unblock, and
    with the block gone it says what the relay does."""
    found = conn.execute(CONSENT_WHILE_BLOCKING).fetchall()
    if not found:
        return
    named = by_pair(found)
    ledger = ConsentLedger(sqlite_utils.Database(conn))
    for (signer, target), (categories, blocked_at) in sorted(named.items()):
        state = ledger.pair_state(signer, target)
        ledger.store_pair(
            signer, target, consent_as_the_block_left_it(state, categories, blocked_at)
        )
    conn.executemany(
        "DELETE FROM statements_in_force WHERE signer = ? AND target = ? AND family = ?",
        [row[:3] for row in found],
    )
    withdrawn = 0
    for seq in sorted({int(row[3]) for row in found}):
        # Every family of a statement made while blocking was cleared: it goes whole.
        for signer, target, nonce in conn.execute(
            "DELETE FROM statements WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM"
            " statements_in_force f WHERE f.seq = statements.seq) RETURNING signer, target, nonce",
            (seq,),
        ).fetchall():
            withdrawn += conn.execute(
                "DELETE FROM queue WHERE recipient = ? AND sender = ? AND intent = 'statement'"
                " AND msg_id = ?",
                (target, signer, nonce),
            ).rowcount
    log_event(
        logging.INFO, "schema_upgraded", table="statements_in_force", rows=len(found),
        receipts=withdrawn, version=15,
    )  # fmt: skip


def _rekey_sent(conn: sqlite3.Connection) -> None:
    """Schema 11: ``sent`` keyed ``(msg_id, sender)`` (:data:`SENT_TABLE`), its rows kept.

    One pass over up to ``QUEUE_TTL_MS`` of SENDs, at the first start of this relay
    version; the log line says how many, since the start waits for it."""
    conn.execute(SENT_TABLE.format(name="sent_rekeyed"))
    rows = conn.execute(
        "INSERT INTO sent_rekeyed (sender, msg_id, digest, at)"
        " SELECT sender, msg_id, digest, at FROM sent ORDER BY msg_id, sender"
    ).rowcount  # in key order: appended, not inserted at random
    conn.execute("DROP TABLE sent")  # and its index
    conn.execute("ALTER TABLE sent_rekeyed RENAME TO sent")
    conn.execute("CREATE INDEX sent_by_age ON sent (at)")
    log_event(logging.INFO, "schema_upgraded", table="sent", rows=rows, version=11)


def _log_existing_businesses(conn: sqlite3.Connection) -> None:
    """Schema 7: the log starts with the key of every business registered before it
    (SPEC §15.1), oldest first, each at its registration time."""
    rows = conn.execute(
        "SELECT handle, kind, identity_key, created_at FROM accounts WHERE kind = ?"
        " ORDER BY created_at, handle",
        (AccountKind.BUSINESS.value,),
    ).fetchall()
    log = TransparencyLog(sqlite_utils.Database(conn))
    log.append(
        entry for row in rows if (entry := transparency.key_binding(*row)) is not None
    )
