"""``blindrelay admin`` and ``inspect`` on either back end (SQLite file, PostgreSQL URL).

One scenario is played against a real relay (SQLite) — accounts with prekeys, consent,
a profile, metered notifications, a chat envelope still queued — and each test gets that
data in the back end it is parametrised with (the PostgreSQL one through
``pgcopy``). The operator's commands must behave the same on both, and ``inspect`` must
report the same lines; PostgreSQL's own failures (no server, no database, a refused
login, a newer schema, a connection lost) are each one line, never a traceback. On
PostgreSQL, a badge issued while a relay worker rotates the business's key is signed
over the key the account keeps, whichever starts first.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from blindrelay.protocol.business import BusinessProfile, OpeningHours, check_badge
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.frames import Ok, ProfilePut, Sent
from blindrelay.protocol.transparency.bills import month_of
from blindrelay.server import cli
from blindrelay.server.admin import public_key_of
from blindrelay.server.config import RelayConfig
from blindrelay.server.registration import invite_digest
from blindrelay.server.relay import serve
from blindrelay.server.store import StoreError, open_admin_store
from blindrelay.server.store.postgresql import operations
from blindrelay.server.store.postgresql.schema import SCHEMA_VERSION
from blindrelay.server.store.postgresql.tx import Tx

from ..pg import PostgresDatabase, database_url
from .conftest import MANY_REGISTRATIONS, FakeClock, RawClient
from .consent_helpers import issue_badge_for, stated
from .pgcopy import copy_to_postgres, reset
from .pgstore_support import started

BLINDRELAY = Path(sys.executable).with_name("blindrelay")
NOW = FakeClock().now
MONTH = month_of(NOW)
CANARY = b"CANARY-" + os.urandom(12).hex().encode() + b"-END"


# --- the scenario, and a store holding it ------------------------------------------


async def _play(db: Path) -> None:
    clock = FakeClock(NOW)
    relay = await serve(
        RelayConfig(host="127.0.0.1", port=0, db_path=db, **MANY_REGISTRATIONS), clock=clock
    )
    opened: list[RawClient] = []

    async def registered(handle: str, kind: str = "user") -> RawClient:
        client = await RawClient.open(relay.url)
        opened.append(client)
        await client.register(handle, kind)
        return client

    try:
        airline = await registered("airline", "business")
        bob = await registered("bob")
        eve = await registered("eve")
        alice = await registered("alice")
        assert isinstance(await bob.upload_prekeys(one_time=3), Ok)
        await stated(bob, "grant", "airline", clock.now, ("utility", "marketing"))
        profile = BusinessProfile(
            v=1, handle="airline", display_name="Air", description="We fly.",
            timezone="Europe/Berlin", hours=(OpeningHours(day=0, open=540, close=1020),),
            exceptions=(), issued_at=clock.now,
        ).sign(lambda m: airline.key.sign(m).signature)  # fmt: skip
        assert isinstance(await airline.request(lambda i: ProfilePut(id=i, profile=profile)), Ok)
        notify = {"intent": "notification"}
        for category in ("utility", "utility", "marketing"):
            sent = await airline.send_message("bob", b"n", category=category, **notify)
            assert isinstance(sent, Sent)
        assert isinstance(await eve.send_message("airline", b"help"), Sent)  # user-initiated
        assert isinstance(await airline.send_message("eve", b"reply"), Sent)  # service reply
        assert isinstance(await alice.send_message("bob", CANARY), Sent)
        await registered("shop", "business")
    finally:
        for client in opened:
            await client.close()
        await relay.close()
    issue_badge_for(db, "shop", NOW)  # verified by another operator key, still in force


@pytest.fixture(scope="module")
def scenario_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The relay's database after the scenario (shared by the module: copy it to change it)."""
    db = tmp_path_factory.mktemp("scenario") / "relay.db"
    asyncio.run(_play(db))
    return db


@dataclass
class Store:
    """One back end holding the scenario, as the operator names it."""

    kind: str
    url: str

    @property
    def flags(self) -> list[str]:
        return ["--db", self.url] if self.kind == "sqlite" else ["--store", self.url]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Read it from outside, as an auditor would (SQL both back ends accept)."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(Path(self.url).resolve().as_uri() + "?mode=ro", uri=True)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        return [tuple(row) for row in asyncio.run(_fetch(self.url, sql))]


async def _fetch(url: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def sqlite_copy(scenario_db: Path, into: Path) -> Store:
    source = sqlite3.connect(scenario_db)
    target = sqlite3.connect(into)
    try:
        source.backup(target)  # everything committed, the WAL's part included
    finally:
        source.close()
        target.close()
    return Store("sqlite", str(into))


def postgres_copy(scenario_db: Path, database: PostgresDatabase) -> Store:
    reset(database.url)
    copy_to_postgres(scenario_db, database.url)
    return Store("postgresql", database.url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, scenario_db: Path, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return sqlite_copy(scenario_db, tmp_path / "relay.db")
    return postgres_copy(scenario_db, request.getfixturevalue("pg_database"))


def admin(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["admin", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def inspect(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["inspect", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- the same commands on both back ends --------------------------------------------


def test_invites_badges_revocation_and_usage_through_the_cli(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = admin(capsys, "invite", "--count", "3", *store.flags)
    tokens = [bytes.fromhex(line) for line in out.split()]
    assert status == 0 and len(tokens) == 3
    stored = {bytes(row[0]) for row in store.rows("SELECT digest FROM invites")}
    assert stored == {invite_digest(token) for token in tokens}  # hashes only

    key_file = tmp_path / "operator.key"
    status, out, _ = admin(capsys, "keygen", "--out", str(key_file))
    operator_public = public_key_of(out)
    verify = ["verify-business", *store.flags, "--operator-key-file", str(key_file)]
    status, _, err = admin(capsys, *verify, "bob", "--name", "Bob")
    assert status == 1 and err == "blindrelay admin: bob: no such business account\n"
    status, out, _ = admin(capsys, *verify, "airline", "--name", "Air Example", "--days", "30")
    assert status == 0 and out.startswith("badge ") and "'Air Example'" in out
    [(signed, identity_key, revoked_at)] = store.rows(
        "SELECT b.signed, a.identity_key, b.revoked_at FROM badges b"
        " JOIN accounts a ON a.handle = b.handle WHERE b.handle = 'airline'"
    )
    assert revoked_at is None
    check = check_badge(
        bytes(signed), operator_key=operator_public, handle="airline",
        identity_key=bytes(identity_key), now_ms=time.time_ns() // 1_000_000,  # the CLI's clock
    )  # fmt: skip
    assert check.verified and check.display_name == "Air Example"

    assert admin(capsys, "revoke-badge", *store.flags, "airline")[1] == (
        "revoked 1 badge(s) of airline\n"
    )
    assert store.rows("SELECT count(*) FROM badges WHERE revoked_at IS NOT NULL") == [(1,)]
    status, _, err = admin(capsys, "revoke-badge", *store.flags, "airline")
    assert status == 1 and err == "blindrelay admin: airline: no badge in force\n"

    prices = ["--price", "utility=0.005", "--price", "marketing=0.02"]
    status, out, _ = admin(capsys, "usage", *store.flags, "--format", "csv", *prices)
    assert status == 0
    assert out.splitlines()[1:] == [f"airline,{MONTH},2,1,1,1,0.010,0.02,0.030,open (3 kept)"]
    status, out, _ = admin(
        capsys, "usage", *store.flags, "--business", "airline", "--month", MONTH, "--format", "json"
    )
    [row] = json.loads(out)
    assert row["notifications"] == {"utility": 2, "marketing": 1}
    assert (row["service_replies"], row["user_initiated"]) == (1, 1)
    status, out, _ = admin(capsys, "usage", *store.flags, "--month", "2001-01", "--format", "json")
    assert status == 0 and json.loads(out) == []

    status, out, _ = inspect(capsys, *store.flags)
    assert status == 0
    assert "  invites                     3 rows" in out.splitlines()
    [airline] = [line for line in out.splitlines() if "'Air Example' expires=" in line]
    assert " airline " in airline and not airline.endswith("revoked=no")
    [shop] = [line for line in out.splitlines() if " shop 'Shop' expires=" in line]
    assert shop.endswith(" revoked=no")  # another business's badge is untouched


def test_a_transaction_commits_everything_or_nothing(store: Store) -> None:
    """``AdminStore.transaction``: all or nothing, nested ones as savepoints; outside
    one every call commits on its own, seen at once from another connection."""
    admin_store = open_admin_store(store.url)
    try:
        with pytest.raises(RuntimeError), admin_store.transaction():
            admin_store.add_invites([b"a" * 32], NOW)
            admin_store.add_invites([b"b" * 32], NOW)
            raise RuntimeError("the operator's command fails")
        assert store.rows("SELECT count(*) FROM invites") == [(0,)]
        with admin_store.transaction():
            admin_store.add_invites([b"c" * 32], NOW)
            with pytest.raises(RuntimeError), admin_store.transaction():
                admin_store.add_invites([b"d" * 32], NOW)
                raise RuntimeError("an inner step fails")
            admin_store.add_invites([b"e" * 32], NOW)
        digests = {bytes(row[0]) for row in store.rows("SELECT digest FROM invites")}
        assert digests == {b"c" * 32, b"e" * 32}
        admin_store.add_invites([b"f" * 32], NOW)  # no transaction: committed by itself
        assert store.rows("SELECT count(*) FROM invites") == [(3,)]
        airline = admin_store.account("airline")
        assert airline is not None and airline.kind == "business"
        assert admin_store.account("nobody") is None
        assert admin_store.revoke_badges("airline", NOW) == 0
    finally:
        admin_store.close()


def test_an_operator_write_waits_for_the_relay_instead_of_failing(
    scenario_db: Path, tmp_path: Path
) -> None:
    """The running relay commits every few milliseconds (tree heads, SPEC §15.3). An
    operator's transaction that read before the relay's commit could not write after
    it: SQLite refuses a deferred transaction's upgrade at once ("database is locked",
    whatever the busy timeout). Begun IMMEDIATE, it waits for the lock instead."""
    path = sqlite_copy(scenario_db, tmp_path / "relay.db").url
    admin_store = open_admin_store(path)
    writing, done = threading.Event(), threading.Event()

    def relay_commits() -> None:  # the relay, in the middle of a commit
        relay = sqlite3.connect(path, isolation_level=None, timeout=10)
        relay.execute("BEGIN IMMEDIATE")
        relay.execute("INSERT INTO invites (digest, created_at) VALUES (?, ?)", (b"r" * 32, NOW))
        writing.set()
        done.wait(0.3)  # the operator's command starts meanwhile, and must wait
        relay.execute("COMMIT")
        relay.close()

    thread = threading.Thread(target=relay_commits)
    thread.start()
    try:
        assert writing.wait(10)
        assert admin_store.revoke_badges("airline", NOW) >= 0
    finally:
        done.set()
        thread.join()
        admin_store.close()


# --- a badge and a key rotation at once (PostgreSQL: relay workers and the operator) ---


OLD_KEY, NEW_KEY = b"o" * 32, b"n" * 32


@asynccontextmanager
async def rotating(url: str) -> AsyncIterator[None]:
    """A relay worker's batch rotating ``shop``'s key from OLD_KEY to NEW_KEY, its
    transaction open for the body to run in and committed after it."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM queue_counts WHERE handle = 'shop' FOR UPDATE")
            await operations.rotate_identity(Tx(conn, "w2"), "shop", OLD_KEY, NEW_KEY, 0)
            yield
    finally:
        await conn.close()


async def rotate(url: str) -> None:
    async with rotating(url):
        pass


async def until_one_waits_for_a_lock(url: str, work: asyncio.Future[Any]) -> None:
    """Until a transaction of this database waits for a lock, or ``work`` is done: the
    point at which the other side may go on, whatever the machine's speed."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(3000):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            if waiting or work.done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("neither done nor waiting for a lock")
    finally:
        await conn.close()


async def a_business(url: str) -> None:
    async with started(url) as store:  # closed again: nothing of the relay runs meanwhile
        await store.submit("create_account", "shop", "business", OLD_KEY, 0)


async def badges_and_key(url: str) -> tuple[list[bytes], bytes]:
    """(every badge of ``shop``, its key now)."""
    [(key,)] = await _fetch(url, "SELECT identity_key FROM accounts WHERE handle = 'shop'")
    return [bytes(row[0]) for row in await _fetch(url, "SELECT signed FROM badges")], bytes(key)


async def test_verify_business_during_a_rotation_badges_the_key_the_rotation_leaves(
    fresh: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``verify-business`` while a relay worker's rotation of the business's key is not
    committed yet: the badge is for the new key, which the relay serves it with. Read
    without a lock, the old key was signed and the badge committed after the rotation —
    for a key no longer the account's, never served, the operator told it was issued."""
    await a_business(fresh)
    key_file = tmp_path / "operator.key"
    operator_key = public_key_of(admin(capsys, "keygen", "--out", str(key_file))[1])
    argv = ["admin", "verify-business", "--store", fresh, "--operator-key-file", str(key_file)]
    async with rotating(fresh):
        command = asyncio.ensure_future(
            asyncio.to_thread(cli.main, [*argv, "shop", "--name", "Shop"])
        )
        await until_one_waits_for_a_lock(fresh, command)
    assert await asyncio.wait_for(command, 30) == 0
    [badge], key = await badges_and_key(fresh)
    assert key == NEW_KEY
    now = time.time_ns() // 1_000_000
    check = check_badge(
        badge, operator_key=operator_key, handle="shop", identity_key=key, now_ms=now
    )
    assert check.verified
    assert f"key {key_fingerprint(NEW_KEY).hex()[:16]}" in capsys.readouterr().out
    async with started(fresh) as store:
        assert await store.submit("fetch_profile", "shop", now) == [NEW_KEY, None, badge]


async def test_a_rotation_waits_for_a_badge_being_issued_for_the_key_it_replaces(
    fresh: str,
) -> None:
    """The other order: the operator's transaction has read the key; a rotation must wait
    until the badge over that key is committed (then stops being served by it), not
    commit in between and leave a badge issued, after it, for the key it replaced."""
    await a_business(fresh)
    admin_store = open_admin_store(fresh)
    try:
        with admin_store.transaction():
            account = admin_store.account("shop")
            assert account is not None and account.identity_key == OLD_KEY
            rotation = asyncio.ensure_future(rotate(fresh))
            await until_one_waits_for_a_lock(fresh, rotation)
            assert not rotation.done()
            admin_store.add_badge(
                serial=1, handle="shop", key_fingerprint=key_fingerprint(OLD_KEY),
                display_name="Shop", issued_at=NOW, expires_at=NOW + 1, signed=b"badge",
            )  # fmt: skip
        await asyncio.wait_for(rotation, 30)
    finally:
        admin_store.close()
    assert await badges_and_key(fresh) == ([b"badge"], NEW_KEY)


# --- inspect: the same report from both back ends ------------------------------------


def _sections(report: str) -> tuple[dict[str, str], list[str]]:
    """(row count per table, every line after the table list)."""
    lines = report.splitlines()
    assert lines[1] == "tables:"
    end = next(i for i, line in enumerate(lines[2:], 2) if not line.startswith("  "))
    counts = {line.split()[0]: line.split()[1] for line in lines[2:end]}
    return counts, lines[end:]


@pytest.mark.parametrize("limit", ["50", "1", "-1"])
def test_inspect_reports_the_same_lines_from_postgresql_as_from_sqlite(
    scenario_db: Path,
    pg_database: PostgresDatabase,
    capsys: pytest.CaptureFixture[str],
    limit: str,
) -> None:
    pg = postgres_copy(scenario_db, pg_database)
    status, sqlite_report, _ = inspect(capsys, "--db", str(scenario_db), "--limit", limit)
    assert status == 0
    status, pg_report, _ = inspect(capsys, "--store", pg.url, "--limit", limit)
    assert status == 0
    assert pg_report.splitlines()[0] == f"database {pg.url}"
    sqlite_counts, sqlite_rest = _sections(sqlite_report)
    pg_counts, pg_rest = _sections(pg_report)
    assert pg_rest == sqlite_rest
    assert pg_counts.keys() - sqlite_counts.keys() == {
        "schema_version", "queue_counts", "queue_acks", "workers"
    }  # fmt: skip
    assert sqlite_counts.keys() - pg_counts.keys() == {"sqlite_sequence"}
    assert {name: pg_counts[name] for name in sqlite_counts if name in pg_counts} == {
        name: count for name, count in sqlite_counts.items() if name != "sqlite_sequence"
    }
    # What the scenario left is there to see, as metadata only.
    assert "private seed stored, not shown" in pg_report
    assert CANARY[8:16].hex() not in pg_report and CANARY.decode() not in pg_report
    if limit == "1":
        assert any(line.startswith("  … ") and line.endswith(" more") for line in pg_rest)
    else:
        assert "alice → bob chat" in pg_report and CANARY[:8].hex() in pg_report
        assert "airline ↔ bob consent=" in pg_report and "shop 'Shop' expires=" in pg_report


# --- PostgreSQL's own failures, one line each ------------------------------------------


@pytest.fixture
def fresh(pg_database: PostgresDatabase) -> str:
    """The module's database, emptied: no schema at all."""
    reset(pg_database.url)
    return pg_database.url


def test_an_admin_command_on_an_empty_database_creates_the_schema_as_the_relay_does(
    fresh: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = inspect(capsys, "--store", fresh)
    assert status == 1 and err == (
        f"blindrelay inspect: no blindrelay store in {fresh} (no schema_version):"
        " name the database a relay uses\n"
    )
    assert Store("postgresql", fresh).rows("SELECT to_regclass('schema_version')") == [(None,)]
    status, out, _ = admin(capsys, "invite", "--store", fresh)
    assert status == 0 and len(bytes.fromhex(out.strip())) == 16
    assert Store("postgresql", fresh).rows("SELECT version FROM schema_version") == [
        (version,) for version in range(1, SCHEMA_VERSION + 1)
    ]
    status, out, _ = inspect(capsys, "--store", fresh)
    assert status == 0 and "  invites                     1 rows" in out.splitlines()


def test_a_database_upgraded_by_a_newer_relay_is_refused_and_left_alone(
    fresh: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(capsys, "usage", "--store", fresh)[0] == 0  # the current schema
    newer = SCHEMA_VERSION + 1
    Store("postgresql", fresh).rows(f"INSERT INTO schema_version (version) VALUES ({newer})")
    says = (
        f"the database at {fresh} has schema version {newer}, newer than this relay's "
        f"{SCHEMA_VERSION}: run a relay at least as new as the one that upgraded it\n"
    )
    assert admin(capsys, "invite", "--store", fresh) == (1, "", f"blindrelay admin: {says}")
    assert inspect(capsys, "--store", fresh) == (1, "", f"blindrelay inspect: {says}")
    assert Store("postgresql", fresh).rows("SELECT count(*) FROM invites") == [(0,)]


def test_a_missing_database_or_a_refused_login_is_one_line(
    pg_server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = database_url(pg_server_url, f"blindrelay_missing_{secrets.token_hex(4)}")
    name = missing.rsplit("/", 1)[1]
    for command in (admin, inspect):
        argv = ("usage", "--store", missing) if command is admin else ("--store", missing)
        status, out, err = command(capsys, *argv)
        assert status == 1 and out == "" and err.count("\n") == 1
        assert err.endswith(
            f'{missing}: database "{name}" does not exist: create it (CREATE DATABASE)'
            " or name an existing database\n"
        )
    assert Store("postgresql", pg_server_url).rows(
        f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"
    ) == [(0,)]  # not created behind the operator's back
    stranger = pg_server_url.replace("://", f"://nobody_{secrets.token_hex(4)}:secret@", 1)
    status, _, err = admin(capsys, "invite", "--store", stranger)
    assert status == 1 and err.count("\n") == 1 and "secret" not in err
    assert "the server refused the login: role " in err
    assert "check the user and password in the URL" in err


def test_the_command_itself_prints_one_line_and_no_traceback(pg_server_url: str) -> None:
    """The installed ``blindrelay`` entry point, as an operator runs it."""
    missing = database_url(pg_server_url, f"blindrelay_missing_{secrets.token_hex(4)}")
    for argv in (["admin", "invite", "--store", missing], ["inspect", "--store", missing]):
        done = subprocess.run(
            [str(BLINDRELAY), *argv], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(f"blindrelay {argv[0]}: ")
        assert done.stderr.count("\n") == 1 and "does not exist" in done.stderr


def test_a_connection_lost_under_a_command_is_one_line(fresh: str) -> None:
    admin_store = open_admin_store(fresh)
    try:
        [(killed,)] = Store("postgresql", fresh).rows(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"  # gone
            " WHERE application_name = 'blindrelay admin' AND datname = current_database()"
        )
        assert killed == 1
        with pytest.raises(StoreError) as lost:
            admin_store.usage(None, None)
        message = str(lost.value)
        assert message.startswith(f"lost the connection to {fresh} (") and "\n" not in message
        assert message.endswith("): run the command again once the server answers")
    finally:
        admin_store.close()  # never raises, even on a dead connection


def test_the_admin_store_works_inside_a_program_running_an_event_loop(fresh: str) -> None:
    """Its private loop runs on a thread of its own, so a caller's loop does not stop it."""

    async def inside() -> list[str]:
        admin_store = open_admin_store(fresh)
        try:
            admin_store.add_invites([b"x" * 32], NOW)
            return [usage.business for usage in admin_store.usage(None, None)]
        finally:
            admin_store.close()

    assert asyncio.run(inside()) == []
    assert Store("postgresql", fresh).rows("SELECT count(*) FROM invites") == [(1,)]
