"""Upgrades of a PostgreSQL store (tests/pg.py): a database at an older schema is migrated
by the first worker to start and keeps what it holds — queue counts, the idempotence
memory, the last delivery ids — and what an old relay let in is judged again.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import limits
from blindrelay.protocol.errors import QueueFull
from blindrelay.protocol.signed import make_statement
from blindrelay.server.store.postgresql import schema
from blindrelay.server.store.postgresql.store import (
    connect,
)
from blindrelay.server.store.rules import envelope_digest

from ..pg import PostgresDatabase
from .pgstore_support import counts, send_chat, started, users


async def _schema_left_by(conn: Any, version: int) -> None:
    """The tables a relay of schema ``version`` left: its migrations, recorded as applied."""
    await conn.execute(
        "CREATE TABLE schema_version (version integer PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for applied in range(1, version + 1):
        await conn.execute(schema.MIGRATIONS[applied])
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", applied)


async def test_an_upgrade_to_schema_3_keeps_every_accounts_queue_count(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await _schema_left_by(conn, 2)
            await conn.execute(
                "INSERT INTO accounts (handle, kind, identity_key, created_at) VALUES"
                " ('alice', 'user', '\\x00', 0), ('bob', 'user', '\\x00', 0);"
                " INSERT INTO queue_counts (handle, queued) VALUES ('alice', 0), ('bob', 1);"
                " INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, sent_at, body)"
                " VALUES ('bob', 'alice', 'user', '\\x01', 'chat', 5, '\\x02')"
            )
    finally:
        await conn.close()
    async with started(url) as store:
        assert await counts(url, "bob") == (1, 1)
        with pytest.raises(QueueFull):
            await send_chat(store, "alice", "bob", 2, queue_cap=1)
        [[delivery_id, *_]], _high = await store.submit("page", "bob", 0, 10, 0)
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        store.call_many("acknowledge", ["bob", [delivery_id]], lambda ok, v: acked.set_result(v))
        assert await acked == 1
        await send_chat(store, "alice", "bob", 2, queue_cap=1)
        assert await counts(url, "bob") == (1, 1)


async def test_an_upgrade_to_schema_9_keys_sent_by_msg_id_and_keeps_what_it_remembers(
    pg_database: PostgresDatabase,
) -> None:
    """Schema 9: ``sent`` keyed ``(msg_id, sender)``, as SQLite's; a SEND remembered
    before the upgrade is still answered as a resend with its original time (§6.3.2)."""
    url = pg_database.fresh_schema()
    msg_id = (7).to_bytes(16, "big")  # what send_chat(…, 7) sends
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await _schema_left_by(conn, 8)
            await conn.execute(
                "INSERT INTO sent (sender, msg_id, digest, at) VALUES ('alice', $1, $2, 3)",
                msg_id, envelope_digest("bob", "chat", None, None, b"x"),
            )  # fmt: skip
    finally:
        await conn.close()
    async with started(url) as store:
        await users(store, "alice", "bob")
        assert await send_chat(store, "alice", "bob", 7) == 3  # the resend's original time
    conn = await asyncpg.connect(url)
    try:
        assert await schema.schema_version(conn) == schema.SCHEMA_VERSION
        key = await conn.fetch(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'sent'::regclass"
            " AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)"
        )
    finally:
        await conn.close()
    assert [row["attname"] for row in key] == ["msg_id", "sender"]


async def test_an_upgrade_to_schema_13_lists_no_business_a_block_of_a_handle_nobody_held(
    pg_database: PostgresDatabase,
) -> None:
    """Schema 13 (SPEC §7.6, threat model T47), as SQLite's 14: a statement in force about
    a target that is no business at the upgrade (none was forwarded: accounts are neither
    deleted nor change kind) is listed to no one but its signer, even if the handle is
    registered later; one about an existing business keeps being listed to it. So does
    the unblock that lifts each: it goes where its block went (SPEC §7.5)."""
    url = pg_database.fresh_schema()
    key = SigningKey.generate()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await _schema_left_by(conn, 12)
            await conn.execute(
                "INSERT INTO accounts (handle, kind, identity_key, created_at) VALUES"
                " ('bob', 'user', $1::bytea, 0), ('carol', 'user', '\\x02', 0),"
                " ('shop', 'business', '\\x03', 0)",
                bytes(key.verify_key),
            )
            await conn.execute(
                "INSERT INTO pairs (low, high, consent, pending, window_until, blockers)"
                " VALUES ('bob', 'ghost', '{}', '', 0, 'bob'), ('bob', 'shop', '{}', '', 0, 'bob');"
                " INSERT INTO queue_counts (handle) VALUES ('bob'), ('carol'), ('shop');"
                " INSERT INTO statements (signer, target, action, issued_at, accepted_at, nonce,"
                "  signed) VALUES ('bob', 'ghost', 'block', 5, 7, '\\x01', '\\x01'),"
                "  ('bob', 'shop', 'block', 5, 7, '\\x02', '\\x02'),"
                "  ('bob', 'carol', 'block', 5, 7, '\\x03', '\\x03');"
                " INSERT INTO statements_in_force (signer, target, family, seq)"
                "  SELECT signer, target, 'block', seq FROM statements"
            )
    finally:
        await conn.close()
    async with started(url) as store:
        assert await store.submit("statements_in_force", "shop", 0, 10) == [[b"\x02"], None]
        await store.submit("create_account", "ghost", "business", b"g" * 32, 9)
        assert await store.submit("statements_in_force", "ghost", 0, 10) == [[], None]
        assert await store.submit("statements_in_force", "bob", 0, 10) == [
            [b"\x01", b"\x02", b"\x03"], None
        ]  # fmt: skip
        for target, goes in (("ghost", False), ("shop", True)):
            unblock = make_statement(
                "unblock", signer="bob", signer_key=bytes(key.verify_key), target=target,
                relay_key=b"r" * 32, now_ms=10, rng=os.urandom,
            ).sign(lambda m: key.sign(m).signature)  # fmt: skip
            cooldown = limits.CONSENT_COOLDOWN_MS
            forwarded = (await store.submit("apply_statement", "bob", unblock, 10, cooldown))[1]
            assert (forwarded is not None) is goes
            listed = await store.submit("statements_in_force", target, 0, 10)
            assert listed == [[unblock] if goes else [], None]
    conn = await asyncpg.connect(url)
    try:
        assert await schema.schema_version(conn) == schema.SCHEMA_VERSION
        flags = await conn.fetch("SELECT target, to_target FROM statements_in_force ORDER BY seq")
        default = await conn.fetchval(
            "SELECT column_default IS NULL FROM information_schema.columns WHERE table_schema ="
            " current_schema() AND table_name = 'statements_in_force' AND column_name = 'to_target'"
        )
    finally:
        await conn.close()
    assert [tuple(row) for row in flags] == [
        ("carol", False), ("ghost", False), ("shop", True),
    ]  # fmt: skip
    assert default is True  # no default: every writer says it


async def test_an_upgrade_to_schema_10_keeps_each_accounts_last_delivery_id(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    conn = await connect(url)
    try:
        await _schema_left_by(conn, 9)
        await conn.execute(
            "INSERT INTO accounts (handle, kind, identity_key, created_at) VALUES"
            " ('alice', 'user', '\\x00', 0), ('bob', 'user', '\\x01', 0);"
            " INSERT INTO queue_counts (handle, queued) VALUES ('alice', 0), ('bob', 2);"
            " INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, sent_at, body)"
            "  VALUES ('bob', 'alice', 'user', '\\x07', 'chat', 1, '\\x00'),"
            "  ('bob', 'alice', 'user', '\\x09', 'chat', 1, '\\x00')"
        )
        last = await conn.fetchval("SELECT max(delivery_id) FROM queue WHERE recipient = 'bob'")
    finally:
        await conn.close()
    async with started(url) as store:
        assert (await send_chat(store, "alice", "bob", 1))[2] == last
        assert (await send_chat(store, "bob", "alice", 2))[2] == 0
