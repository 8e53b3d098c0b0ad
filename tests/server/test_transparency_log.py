"""The transparency log behind the store interface (SPEC §15), on SQLite and PostgreSQL.

Appends commit with the change they record (a refusal logs nothing); proofs
the store generates verify with the protocol's verifiers alone; tree heads
only grow, each with the log's own root.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import HandleTaken, InternalError, NotFound, StaleStatement
from blindrelay.protocol.signed import make_statement
from blindrelay.protocol.transparency import entries as e
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.treehead import open_tree_head, sign_tree_head
from blindrelay.server.config import RelayConfig
from blindrelay.server.store import Store, StoreJobError, open_admin_store, open_store
from blindrelay.server.store.sqlite.transparency import SCHEMA as LOG_SCHEMA
from blindrelay.server.store.sqlite.transparency import TransparencyLog

from .. import pg
from ..pg import PostgresDatabase

T0 = 1_790_000_000_000
RELAY = IdentityKeyPair(b"\xc0" * 32)
ALICE = IdentityKeyPair(b"\xa0" * 32)
AIRLINE = IdentityKeyPair(b"\xe0" * 32)
AIRLINE_NEW = IdentityKeyPair(b"\xe1" * 32)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_database").fresh_schema())
    return str(tmp_path / "r.db")


@contextlib.asynccontextmanager
async def opened(store_url: str) -> AsyncIterator[Store]:
    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def logged(store: Store) -> list[e.LogEntry]:
    return [e.decode_entry(data) for data in await store.submit("log_entries", 0, 1000)]


def grant(nonce: int) -> bytes:
    return make_statement(
        "grant", signer="alice", signer_key=ALICE.public, target="skyways.air",
        relay_key=RELAY.public, now_ms=T0, rng=lambda n: bytes([nonce]) * n,
        categories=("utility",),
    ).sign(ALICE.sign)  # fmt: skip


async def test_keys_and_statements_are_logged_with_what_they_record(store_url: str) -> None:
    async with opened(store_url) as store:
        await store.submit("create_account", "skyways.air", "business", AIRLINE.public, T0)
        await store.submit("create_account", "alice", "user", ALICE.public, T0 + 1)
        await store.submit("rotate_identity", "skyways.air", AIRLINE.public, AIRLINE_NEW.public, T0 + 2)
        statement = grant(1)
        await store.submit("apply_statement", "alice", statement, T0 + 3, 1000)
        assert await logged(store) == [
            e.KeyBinding(v=1, handle="skyways.air", kind="business", identity_key=AIRLINE.public, at=T0),
            # a user's key is not published: alice has not opted in
            e.KeyBinding(v=1, handle="skyways.air", kind="business", identity_key=AIRLINE_NEW.public,
                         at=T0 + 2, previous_key=AIRLINE.public),
            # dated by the statement's own issued_at, so its holder can rebuild it
            e.StatementLogged(v=1, commitment=e.statement_commitment(statement), at=T0),
        ]  # fmt: skip


async def test_a_refused_change_logs_nothing(store_url: str) -> None:
    async with opened(store_url) as store:
        await store.submit("create_account", "skyways.air", "business", AIRLINE.public, T0)
        await store.submit("create_account", "alice", "user", ALICE.public, T0)
        await store.submit("apply_statement", "alice", grant(1), T0, 1000)
        before = await logged(store)
        with pytest.raises(HandleTaken):
            await store.submit("create_account", "skyways.air", "business", ALICE.public, T0)
        with pytest.raises(StaleStatement):  # the same nonce again
            await store.submit("apply_statement", "alice", grant(1), T0, 1000)
        with pytest.raises(StaleStatement):  # a rotation from a key that is not the current one
            await store.submit("rotate_identity", "skyways.air", ALICE.public, AIRLINE.public, T0)
        assert await logged(store) == before and len(before) == 2


async def test_proofs_from_the_store_verify_against_signed_heads(store_url: str) -> None:
    async with opened(store_url) as store:
        data = [e.StatementLogged(v=1, commitment=bytes([i]) * 32, at=T0 + i).to_bytes()
                for i in range(37)]  # fmt: skip
        assert await store.submit("log_append", data[:20]) == 0
        assert await store.submit("log_append", data[20:]) == 20
        leaves = [merkle.leaf_hash(d) for d in data]
        heads = {}
        for size in (13, 20, 37):
            state = await store.submit("log_state")
            assert state[0] == 37 and state[1] == merkle.root_of(leaves)
            root = merkle.root_of(leaves[:size])
            signed = sign_tree_head(RELAY.sign, size, root, T0 + size)
            assert await store.submit("log_add_head", size, root, T0 + size, signed) is True
            heads[size] = open_tree_head((await store.submit("log_head"))[3], RELAY.public)
            assert heads[size].root == root
        for index in (0, 12, 19, 36):
            proof = await store.submit("log_inclusion", index, 37)
            merkle.verify_inclusion(leaves[index], index, 37, proof, heads[37].root)
        for first in (13, 20):
            proof = await store.submit("log_consistency", first, 37)
            merkle.verify_consistency(first, 37, heads[first].root, heads[37].root, proof)
        assert await store.submit("log_entries", 35, 10) == data[35:]
        for name, args in [("log_inclusion", (37, 37)), ("log_inclusion", (0, 38)),
                           ("log_consistency", (0, 37)), ("log_consistency", (20, 38))]:  # fmt: skip
            with pytest.raises(NotFound):
                await store.submit(name, *args)


async def test_tree_heads_only_grow_and_carry_the_logs_root(store_url: str) -> None:
    async with opened(store_url) as store:
        data = [e.StatementLogged(v=1, commitment=bytes([i]) * 32, at=T0).to_bytes() for i in range(5)]
        await store.submit("log_append", data)
        root4 = merkle.root_of([merkle.leaf_hash(d) for d in data[:4]])

        def head(size: int, root: bytes, at: int) -> list[Any]:
            return [size, root, at, sign_tree_head(RELAY.sign, size, root, at)]

        assert await store.submit("log_add_head", *head(4, root4, T0 + 10)) is True
        # another worker published as large a head first: nothing to add
        assert await store.submit("log_add_head", *head(3, root4, T0 + 11)) is False
        assert await store.submit("log_add_head", *head(4, root4, T0 + 12)) is False
        wrong = merkle.leaf_hash(b"another history")
        for bad in (head(5, wrong, T0 + 13), head(6, wrong, T0 + 13), head(5, root4, T0 + 13)):
            with pytest.raises(InternalError):
                await store.submit("log_add_head", *bad)
        root5 = merkle.root_of([merkle.leaf_hash(d) for d in data])
        with pytest.raises(InternalError):  # older than the newest head
            await store.submit("log_add_head", *head(5, root5, T0 + 9))
        assert (await store.submit("log_head"))[:3] == [4, root4, T0 + 10]


async def test_only_log_entries_can_be_appended(store_url: str) -> None:
    async with opened(store_url) as store:
        with pytest.raises(StoreJobError):
            await store.submit("log_append", [b"blindrelay/v1/bill/item\x00\x80"])
        assert await store.submit("log_state") == [0, merkle.EMPTY_ROOT, None]


async def test_badge_entries_commit_with_the_badge(store_url: str) -> None:
    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        await store.submit("create_account", "skyways.air", "business", AIRLINE.public, T0)
    finally:
        await store.close()
    admin = open_admin_store(store_url)
    try:
        with pytest.raises(RuntimeError), admin.transaction():
            admin.add_badge(serial=1, handle="skyways.air", key_fingerprint=b"f" * 32,
                            display_name="Skyways", issued_at=T0, expires_at=T0 + 1,
                            signed=b"badge 1")  # fmt: skip
            raise RuntimeError("the operator's command fails: the badge and its entry go")
        for serial in (7, 3):
            admin.add_badge(serial=serial, handle="skyways.air", key_fingerprint=b"f" * 32,
                            display_name="Skyways", issued_at=T0 + serial, expires_at=T0 + 99,
                            signed=b"badge %d" % serial)  # fmt: skip
        assert admin.revoke_badges("skyways.air", T0 + 50) == 2
    finally:
        admin.close()
    store = open_store(store_url, RelayConfig())
    await store.start()
    try:
        assert (await logged(store))[1:] == [
            e.BadgeIssued(v=1, handle="skyways.air", serial=7, badge=b"badge 7", at=T0 + 7),
            e.BadgeIssued(v=1, handle="skyways.air", serial=3, badge=b"badge 3", at=T0 + 3),
            e.BadgeRevoked(v=1, handle="skyways.air", serial=3, at=T0 + 50),
            e.BadgeRevoked(v=1, handle="skyways.air", serial=7, at=T0 + 50),
        ]
    finally:
        await store.close()


async def test_an_upgraded_sqlite_relay_logs_the_businesses_it_already_had(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = open_store(str(path), RelayConfig())
    await store.start()
    await store.submit("create_account", "skyways.air", "business", AIRLINE.public, T0)
    await store.submit("create_account", "alice", "user", ALICE.public, T0)
    await store.close()
    with sqlite3.connect(path) as conn:  # as a schema-6 relay left it: no log tables
        for table in ("log_entries", "log_nodes", "log_heads", "log_bindings", "log_times"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("PRAGMA user_version=6")
    store = open_store(str(path), RelayConfig())
    await store.start()
    try:
        assert await logged(store) == [
            e.KeyBinding(v=1, handle="skyways.air", kind="business", identity_key=AIRLINE.public, at=T0)
        ]
        await sign_head(store)  # schema 8: the binding is found for BUNDLE's proof
        assert (await store.submit("log_binding_proof", "skyways.air"))[1] == 0
    finally:
        await store.close()


async def test_an_upgraded_log_finds_its_entries_by_time_and_tag(store_url: str) -> None:
    """Schema 12 (SQLite) / 11 (PostgreSQL): ``log_times`` without tags, as the schema
    before left it, is made anew from the log at the next start."""
    pile = piled(3)
    async with opened(store_url) as store:
        await store.submit("log_append", pile)
        await sign_head(store)
    old = "CREATE TABLE log_times (at bigint NOT NULL, seq bigint NOT NULL, PRIMARY KEY (at, seq))"
    if store_url.startswith("postgresql"):
        pg.execute(store_url, "DROP TABLE log_times", old,
                   "INSERT INTO log_times SELECT 0, seq FROM log_entries",
                   "DELETE FROM schema_version WHERE version > 10")  # fmt: skip
    else:
        with sqlite3.connect(store_url) as conn:
            conn.executescript(f"DROP TABLE log_times; {old};"
                               " INSERT INTO log_times SELECT 0, seq FROM log_entries;"
                               " PRAGMA user_version=11;")  # fmt: skip
    async with opened(store_url) as store:
        for index, entry in enumerate(pile):
            assert (await store.submit("log_find", entry, 3))[0] == index


async def sign_head(store: Store) -> bytes:
    size, root, _ = await store.submit("log_state")
    signed = sign_tree_head(RELAY.sign, size, root, T0 + size)
    assert await store.submit("log_add_head", size, root, T0 + size, signed) is True
    return signed


def piled(count: int) -> list[bytes]:
    """``count`` statement entries dated alike: a signer picks its statements' ``at``
    (their ``issued_at``), and one account could pile tens of thousands on one."""
    return [
        e.StatementLogged(v=1, commitment=n.to_bytes(32, "big"), at=T0).to_bytes()
        for n in range(count)
    ]


async def test_an_entry_is_found_among_thousands_of_its_time(store_url: str) -> None:
    """SPEC §15.6 rule 1: LOG_INCLUSION_FETCH finds an entry by its time; among 2,000
    entries of one ``at`` each is found at its own index, and one never logged is not."""
    pile = piled(2000)
    async with opened(store_url) as store:
        await store.submit("log_append", pile)
        await sign_head(store)
        for index in (0, 1, 1234, 1999):
            assert (await store.submit("log_find", pile[index], 2000))[0] == index
        stranger = e.StatementLogged(v=1, commitment=b"\xff" * 32, at=T0).to_bytes()
        with pytest.raises(NotFound):
            await store.submit("log_find", stranger, 2000)


def test_finding_an_entry_costs_the_same_however_many_share_its_time(tmp_path: Path) -> None:
    """A fetch compared every entry of its ``at`` in the writer: 12 ms at 20,000, and
    one connection's fetches stalled every SEND behind them (found in review). Counted
    in SQLite's VM steps (deterministic), a find among 2,000 entries of its time costs
    what it costs among 20: the index reaches its tag."""
    steps: dict[int, int] = {}
    for count in (20, 2000):
        conn = sqlite3.connect(tmp_path / f"log{count}.db")
        conn.executescript(LOG_SCHEMA)
        log = TransparencyLog(sqlite_utils.Database(conn))
        pile = piled(count)
        log.append(pile)
        ran = [0]

        def step(ran: list[int] = ran) -> int:
            ran[0] += 1
            return 0

        conn.set_progress_handler(step, 1)
        assert log.find(pile[count // 2], count) == count // 2
        conn.set_progress_handler(None, 1)
        steps[count] = ran[0]
        conn.close()
    assert steps[2000] <= 2 * steps[20], steps


async def test_bindings_are_proven_in_the_newest_head_and_leaves_found_by_hash(
    store_url: str,
) -> None:
    """SPEC §15.6: BUNDLE's proof is of the handle's newest binding, in the newest head,
    and only once a head covers it; a user's key only after DISCOVERABLE; proofs only
    for sizes the relay signed."""
    async with opened(store_url) as store:
        await store.submit("create_account", "skyways.air", "business", AIRLINE.public, T0)
        await store.submit("create_account", "alice", "user", ALICE.public, T0)
        assert await store.submit("log_binding_proof", "skyways.air") is None  # no head yet
        with pytest.raises(NotFound):
            await store.submit("log_find", b"no entry", 1)
        first = await sign_head(store)
        entry, index, proof, head = await store.submit("log_binding_proof", "skyways.air")
        assert (index, head) == (0, first) and e.decode_entry(entry).handle == "skyways.air"
        root = open_tree_head(head, RELAY.public).root
        merkle.verify_inclusion(merkle.leaf_hash(entry), 0, 1, proof, root)
        assert await store.submit("log_binding_proof", "alice") is None  # not published
        assert await store.submit("publish_key", "alice", T0 + 1) is True
        assert await store.submit("publish_key", "alice", T0 + 2) is False
        assert await store.submit("publish_key", "skyways.air", T0 + 2) is False
        assert await store.submit("log_binding_proof", "alice") is None  # newer than the head
        await store.submit("rotate_identity", "skyways.air", AIRLINE.public, AIRLINE_NEW.public, T0 + 3)
        with pytest.raises(NotFound):  # size 3 is the log's, but no head says so
            await store.submit("log_find", entry, 3)
        second = await sign_head(store)
        alice_entry, alice_index, _, _ = await store.submit("log_binding_proof", "alice")
        assert alice_index == 1 and e.decode_entry(alice_entry).identity_key == ALICE.public
        rotated, rotated_index, _, head = await store.submit("log_binding_proof", "skyways.air")
        assert rotated_index == 2 and head == second
        assert e.decode_entry(rotated).previous_key == AIRLINE.public
        assert (await store.submit("log_find", entry, 3))[0] == 0
        proof = await store.submit("log_signed_consistency", 1, 3)
        merkle.verify_consistency(1, 3, root, open_tree_head(second, RELAY.public).root, proof)
        for args in [(0, 3), (3, 1), (1, 4)]:
            with pytest.raises(NotFound):
                await store.submit("log_signed_consistency", *args)


@pytest.mark.postgres
async def test_an_upgraded_postgresql_relay_logs_the_businesses_it_already_had(
    pg_database: PostgresDatabase,
) -> None:
    url = pg_database.fresh_schema()
    async with opened(url) as store:
        await store.submit("create_account", "skyways.air", "business", AIRLINE.public, T0)
        await store.submit("create_account", "alice", "user", ALICE.public, T0)
    schema = url.split("search_path=")[1]
    pg.execute(  # as a schema-3 relay left it: no log tables (4), no workers table (5),
        pg_database.url,  # no log_bindings (6), log_times (7), bills (8), last ids (10)
        *[f'DROP TABLE "{schema}".{table}'
          for table in ("log_entries", "log_nodes", "log_heads", "workers", "log_bindings",
                        "log_times", "bill_notifications", "bills", "bill_items")],
        f'ALTER TABLE "{schema}".queue_counts DROP COLUMN last_id',
        f'DELETE FROM "{schema}".schema_version WHERE version >= 4',
    )  # fmt: skip
    async with opened(url) as store:
        assert await logged(store) == [
            e.KeyBinding(v=1, handle="skyways.air", kind="business", identity_key=AIRLINE.public, at=T0)
        ]


@pytest.mark.postgres
async def test_two_workers_registering_at_once_make_one_log(pg_database: PostgresDatabase) -> None:
    """SPEC §15.2: appends by relay processes sharing a store never interleave — every
    entry once, at one index, and the tree of the entries is the tree the store proves."""
    url = pg_database.fresh_schema()
    async with opened(url) as first, opened(url) as second:
        await asyncio.gather(*[
            (first if i % 2 else second).submit(
                "create_account", f"shop{i}.biz", "business", bytes([i]) * 32, T0 + i
            )
            for i in range(40)
        ])  # fmt: skip
        data = await first.submit("log_entries", 0, 1000)
        handles = sorted(e.decode_entry(d).handle for d in data)  # type: ignore[attr-defined]
        assert handles == sorted(f"shop{i}.biz" for i in range(40))
        size, root, _ = await second.submit("log_state")
        assert size == 40 and root == merkle.root_of([merkle.leaf_hash(d) for d in data])
        proof = await first.submit("log_inclusion", 17, 40)
        merkle.verify_inclusion(merkle.leaf_hash(data[17]), 17, 40, proof, root)
