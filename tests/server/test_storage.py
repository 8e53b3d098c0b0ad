"""Group commit, the tables (server/store/sqlite/tables.py) and the jobs the writer runs
(server/store/sqlite/jobs.py); the writer and its process have their own tests
(test_writer.py, test_writer_process.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.consent import PairState
from blindrelay.protocol.errors import ErrorCode, InvalidPrekeys, MessageIdReused, QueueFull
from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.logs import JsonFormatter
from blindrelay.server.store import Account
from blindrelay.server.store.sqlite import accountjobs, jobs
from blindrelay.server.store.sqlite.commit import GroupCommitter
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.schema import SCHEMA_VERSION
from blindrelay.server.store.sqlite.store import SqliteStore
from blindrelay.server.store.sqlite.tables import Tables
from blindrelay.server.store.sqlite.writer import Writer

ALICE = Account("alice", "user", b"k" * 32)
DEFAULT_SEND_RULES = send_rules(RelayConfig())


def committer(path: Path, synchronous: str = "FULL") -> GroupCommitter:
    return GroupCommitter(Tables(connect(path, synchronous)))


def one(store: Tables, n: int, *, cap: int = 10, at: int = 0) -> int:
    accepted = store.queue.enqueue(
        "bob", ALICE, n.to_bytes(16, "big"), "chat", None, None, b"x", b"d%d" % n, at, cap=cap
    )
    assert accepted.envelope is not None
    return accepted.envelope.delivery_id


def enqueue(n: int, cap: int = 10) -> Callable[[Tables], int]:
    return lambda store: one(store, n, cap=cap)


def test_a_batch_is_one_commit_and_a_refused_job_is_refused_alone(tmp_path: Path) -> None:
    writer = committer(tmp_path / "r.db")
    writer.commit([lambda store: store.accounts.create(ALICE, 0)])
    outcomes = writer.commit([enqueue(n, cap=50) for n in range(60)])
    assert writer.commits == 2
    ids = [value for ok, value in outcomes[:50] if ok]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(not ok and isinstance(value, QueueFull) for ok, value in outcomes[50:])


def test_delivery_ids_are_never_reused_after_the_queue_empties(tmp_path: Path) -> None:
    writer = committer(tmp_path / "r.db", "NORMAL")
    [(_, first)] = writer.commit([enqueue(1)])
    writer.commit([lambda store: store.queue.acknowledge("bob", [first])])
    [(_, second)] = writer.commit([enqueue(2)])
    assert second > first


def test_a_job_that_fails_after_writing_undoes_only_itself(tmp_path: Path) -> None:
    """The batch is replayed with savepoints: the failed job's rows and cache
    entries are gone, its neighbours' are committed."""
    writer = committer(tmp_path / "r.db")
    writer.commit([lambda store: store.accounts.create(ALICE, 0)])

    def enqueue_then_fail(store: Tables) -> None:
        one(store, 9)
        store.accounts.create(Account("carol", "user", b"c" * 32), 0)
        raise QueueFull()

    outcomes = writer.commit([enqueue(1), enqueue_then_fail, enqueue(2)])
    assert writer.commits == 2
    assert [ok for ok, _ in outcomes] == [True, False, True]
    assert isinstance(outcomes[1][1], QueueFull)

    def state(store: Tables) -> tuple[int, int, int, bool]:
        rows = store.db.execute("SELECT COUNT(*) FROM queue WHERE recipient = 'bob'").fetchone()[0]
        sent = store.db.execute("SELECT COUNT(*) FROM sent").fetchone()[0]
        return store.queue.queued("bob"), rows, sent, store.accounts.get("carol") is None

    assert writer.commit([state]) == [(True, (2, 2, 2, True))]


def test_a_refused_prekey_upload_never_makes_its_batch_run_again(tmp_path: Path) -> None:
    """SPEC §5.2 refusals (an id already stored, the stored cap) are found before the
    job writes anything, so the batch is not replayed with savepoints."""
    writer = committer(tmp_path / "r.db")
    key = ALICE.identity_key
    signed = [1, b"s" * 32, b"g" * 64]

    def upload(ids: range | list[int], cap: int = 10) -> Callable[[Tables], None]:
        keys = [[key_id, key_id.to_bytes(32, "big")] for key_id in ids]
        return lambda store: accountjobs.upload_prekeys(store, "alice", key, signed, keys, cap, 0)

    writer.commit([lambda store: store.accounts.create(ALICE, 0), upload(range(1, 4))])
    outcomes = writer.commit(
        [enqueue(1), upload([9, 2]), enqueue(2), upload(range(20, 28)), upload([4])]
    )
    assert [ok for ok, _ in outcomes] == [True, False, True, False, True]
    for _, refusal in (outcomes[1], outcomes[3]):
        assert isinstance(refusal, InvalidPrekeys) and refusal.code == ErrorCode.INVALID_PREKEYS
    assert writer.replays == 0
    stored = writer.commit(
        [lambda store: store.db.execute("SELECT key_id FROM one_time_prekeys").fetchall()]
    )
    assert sorted(row[0] for row in stored[0][1]) == [1, 2, 3, 4]


def test_cached_queue_lengths_follow_acks_withdrawals_and_purges(tmp_path: Path) -> None:
    """The cap counts rows from memory; every delete path keeps that count exact."""
    writer = committer(tmp_path / "r.db", "NORMAL")

    def run(job: Callable[[Tables], object]) -> object:
        [(ok, value)] = writer.commit([job])
        if not ok:
            raise value  # type: ignore[misc]
        return value

    def fill(first: int, n: int, at: int) -> Callable[[Tables], list[int]]:
        return lambda store: [one(store, i, cap=5, at=at) for i in range(first, first + n)]

    def recount(store: Tables) -> tuple[int, int]:
        rows = store.db.execute("SELECT COUNT(*) FROM queue WHERE recipient = 'bob'").fetchone()[0]
        return store.queue.queued("bob"), int(rows)

    ids = run(fill(0, 5, at=10))
    assert isinstance(ids, list)
    with pytest.raises(QueueFull):
        run(fill(5, 1, at=10))
    run(lambda store: store.queue.acknowledge("bob", ids[:2]))
    assert run(recount) == (3, 3)
    run(lambda store: store.queue.withdraw("bob", "alice", None))
    assert run(recount) == (0, 0)
    run(fill(10, 3, at=10))
    run(fill(20, 2, at=1000))
    run(lambda store: store.queue.purge(before=500))
    assert run(recount) == (2, 2)


def test_a_new_accounts_queue_is_known_to_be_empty_without_counting(tmp_path: Path) -> None:
    """A fan-out reaches many recipients once each: a COUNT apiece was measurable."""
    writer = committer(tmp_path / "r.db")
    statements: list[str] = []
    writer.tables.db.conn.set_trace_callback(statements.append)
    dave = Account("dave", "user", b"d" * 32)

    def create_then_check(store: Tables) -> int:
        store.accounts.create(dave, 0)
        return store.queue.queued("dave")

    def enqueue_then_check(store: Tables) -> int:
        store.queue.enqueue("dave", ALICE, b"m" * 16, "chat", None, None, b"x", b"d", 0, cap=1)
        with pytest.raises(QueueFull):  # the cap sees the seeded count
            store.queue.add("dave", ALICE, b"n" * 16, "chat", None, None, b"x", b"e", 0, cap=1)
        return store.queue.queued("dave")

    assert writer.commit([create_then_check, enqueue_then_check]) == [(True, 0), (True, 1)]
    assert not [sql for sql in statements if "COUNT" in sql]
    store = writer.tables
    store.cache.clear()  # what a failed commit does: the count is read again, and agrees
    assert store.queue.queued("dave") == 1


# --- the writer process ---------------------------------------------------------


def test_the_even_account_lookup_finds_what_get_finds(tmp_path: Path) -> None:
    """SPEC §11.1: ``get_evenly`` reads a decoy row for an unknown handle but
    answers exactly like ``get``, including with no account at all."""
    store = Tables(connect(tmp_path / "r.db"))
    assert store.accounts.get_evenly("alice") is None
    handles = [f"user{n}" for n in range(7)]
    with store.db.atomic():
        for n, handle in enumerate(handles):
            store.accounts.create(Account(handle, "user", bytes([n]) * 32), 0)
    for handle in [*handles, "alice", "user", "user70", "zz"]:
        assert store.accounts.get_evenly(handle) == store.accounts.get(handle)


# --- jobs.send: decide first, one INSERT OR IGNORE tells new from resend ---------


def test_send_answers_resends_before_every_refusal_and_writes_nothing_for_them(
    tmp_path: Path,
) -> None:
    """SPEC §6.3: a resend gets the original time even after a block or with the
    queue at its cap; other content under the same msg_id is MESSAGE_ID_REUSED."""
    from blindrelay.protocol.consent import PairState
    from blindrelay.protocol.errors import MessageIdReused, RecipientUnavailable
    from blindrelay.server.store.sqlite import jobs

    writer = committer(tmp_path / "r.db")
    bob = Account("bob", "user", b"b" * 32)
    writer.commit([lambda s: s.accounts.create(ALICE, 0), lambda s: s.accounts.create(bob, 0)])

    def send(n: int, body: bytes = b"x", cap: int = 10, at: int = 5) -> Callable[[Tables], object]:
        msg_id = bytes([n]) * 16
        rules = DEFAULT_SEND_RULES._replace(queue_cap=cap)
        return lambda s: jobs.send(s, "alice", "user", "bob", msg_id, "chat", None, None, body,
                                   at, rules)  # fmt: skip

    def counts(store: Tables) -> tuple[int, int]:
        queued = store.db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
        sent = store.db.execute("SELECT COUNT(*) FROM sent").fetchone()[0]
        return int(queued), int(sent)

    [(ok, first)] = writer.commit([send(1)])
    assert ok and isinstance(first, list) and first[1] == 5
    outcomes = writer.commit([send(1, at=9), send(1, body=b"other"), send(2, cap=1), counts])
    assert outcomes[0] == (True, 5)  # the original time, nothing stored
    assert isinstance(outcomes[1][1], MessageIdReused)
    assert isinstance(outcomes[2][1], QueueFull)
    assert outcomes[3] == (True, (1, 1))
    block = PairState(blockers=frozenset({"bob"}))
    writer.commit([lambda s: s.ledger.store_pair("alice", "bob", block)])
    outcomes = writer.commit([send(1, at=9), send(3), counts])
    assert outcomes[0] == (True, 5)
    assert isinstance(outcomes[1][1], RecipientUnavailable)
    assert outcomes[2] == (True, (1, 1))


async def test_a_relay_whose_writer_dies_refuses_writes_and_reports_failure(
    tmp_path: Path,
) -> None:
    """Nothing can be stored without the writer: jobs fail with INTERNAL_ERROR, the
    relay's ``failed`` event is set (the CLI then exits 1), and close() still works."""
    from blindrelay.protocol.errors import InternalError
    from blindrelay.server.config import RelayConfig
    from blindrelay.server.relay import serve

    relay = await serve(RelayConfig(port=0, db_path=tmp_path / "r.db"))
    store = relay.ctx.store
    assert isinstance(store, SqliteStore) and store.pid is not None
    os.kill(store.pid, signal.SIGKILL)
    await asyncio.wait_for(relay.failed.wait(), 10)
    assert relay.failure == "the writer process exited"
    assert not store.running
    with pytest.raises(InternalError):
        store.submit("noop")
    await asyncio.wait_for(relay.close(), 10)


def test_forwarded_statements_are_outside_the_cap_even_when_acknowledged(tmp_path: Path) -> None:
    """SPEC §7.5: a business's queue counts envelopes only; acknowledging a receipt frees
    no room for envelopes, and acknowledging an envelope does."""
    writer = committer(tmp_path / "r.db")
    airline = Account("airline", "business", b"a" * 32)
    writer.commit([lambda s: s.accounts.create(ALICE, 0), lambda s: s.accounts.create(airline, 0)])

    def chat(n: int) -> Callable[[Tables], object]:
        return lambda s: s.queue.enqueue("airline", ALICE, n.to_bytes(16, "big"), "chat", None,
                                         None, b"x", b"d%d" % n, 0, cap=2)  # fmt: skip

    [(_, receipt)] = writer.commit([lambda s: s.queue.enqueue_statement(
        "airline", ALICE, b"n" * 16, b"signed", 0).delivery_id])  # fmt: skip
    first, second = writer.commit([chat(1), chat(2)])
    assert first[0] and second[0]
    [(ok, refused)] = writer.commit([chat(3)])
    assert not ok and isinstance(refused, QueueFull)
    acked = writer.commit([lambda s: jobs.acknowledge(s, [["airline", [receipt]]])])
    assert acked == [(True, [1])]
    assert not writer.commit([chat(3)])[0][0]  # a receipt took no envelope's room
    writer.commit([lambda s: jobs.acknowledge(s, [["airline", [first[1].envelope.delivery_id]]])])
    assert writer.commit([chat(3)])[0][0]


def test_a_schema_2_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """Version 3: nonces in their own table, only the statements in force, who wrote to
    whom per pair, the stranger flag per queued envelope, and budgets."""
    path = tmp_path / "r.db"
    db = connect(path)
    conn = db.conn
    conn.execute("DROP TABLE statement_nonces")
    conn.execute("DROP TABLE budgets")
    conn.execute("DROP INDEX queue_statements")
    conn.execute("DROP INDEX statements_in_force_to_target")
    for table, column in (
        ("pairs", "wrote"), ("pairs", "requests"), ("queue", "stranger"),
        ("statements_in_force", "to_target"),
    ):  # fmt: skip
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute(
        "INSERT INTO pairs (low, high, consent, pending, window_until, blockers)"
        " VALUES ('alice', 'bob', '{}', '', 0, 'bob')"
    )
    for seq, nonce in ((1, b"1" * 16), (2, b"2" * 16)):
        conn.execute(
            "INSERT INTO statements (seq, signer, target, action, categories, issued_at,"
            " accepted_at, nonce, signed) VALUES (?, 'bob', 'airline', 'grant', 'utility',"
            " 5, 7, ?, x'00')",
            (seq, nonce),
        )
        conn.execute(
            "INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, sent_at, body)"
            " VALUES ('airline', 'bob', 'user', ?, 'statement', 7, x'00')",
            (nonce,),
        )
    conn.execute(
        "INSERT INTO statements_in_force (signer, target, family, seq)"
        " VALUES ('bob', 'airline', 'consent:utility', 2)"
    )
    conn.execute("PRAGMA user_version=2")
    conn.close()
    db = connect(path)
    rows = db.execute
    assert rows("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert rows("SELECT seq FROM statements").fetchall() == [(2,)]
    assert rows("SELECT msg_id FROM queue").fetchall() == [(b"2" * 16,)]
    keep = 7 + 2 * limits.STATEMENT_SKEW_MS
    assert rows("SELECT nonce, kept_until FROM statement_nonces ORDER BY nonce").fetchall() == [
        (b"1" * 16, keep), (b"2" * 16, keep),
    ]  # fmt: skip
    assert rows("SELECT stranger FROM queue").fetchall() == [(0,)]
    assert Tables(db).ledger.pair_state("alice", "bob") == PairState(blockers=frozenset({"bob"}))
    db.conn.close()
    connect(path).conn.close()  # and again: nothing left to do


def test_a_schema_13_database_lists_no_business_a_block_of_a_handle_nobody_held(
    tmp_path: Path,
) -> None:
    """Version 14 (SPEC §7.6, threat model T47): statements in force say whether they are
    listed to their target. A target that is no business at the upgrade never had one
    forwarded (accounts are neither deleted nor change kind), so its statements stay
    their signer's even if the handle is registered later; one about an existing
    business keeps being listed to it, as before — and so does each one's unblock."""
    path = tmp_path / "r.db"
    conn = connect(path).conn
    conn.execute("DROP INDEX statements_in_force_to_target")
    conn.execute("ALTER TABLE statements_in_force DROP COLUMN to_target")
    conn.execute(
        "CREATE INDEX statements_in_force_by_target_seq ON statements_in_force (target, seq)"
    )
    conn.executemany(
        "INSERT INTO accounts (handle, kind, identity_key, created_at) VALUES (?, ?, ?, 0)",
        [("bob", "user", b"b" * 32), ("carol", "user", b"c" * 32), ("shop", "business", b"s" * 32)],
    )
    for seq, target in ((1, "ghost"), (2, "shop"), (3, "carol")):
        conn.execute(
            "INSERT INTO statements (seq, signer, target, action, issued_at, accepted_at,"
            " nonce, signed) VALUES (?, 'bob', ?, 'block', 5, 7, ?, ?)",
            (seq, target, bytes([seq]) * 16, bytes([seq])),
        )
        conn.execute(
            "INSERT INTO statements_in_force (signer, target, family, seq)"
            " VALUES ('bob', ?, 'block', ?)",
            (target, seq),
        )
    conn.execute("PRAGMA user_version=13")
    conn.close()
    db = connect(path)
    rows = db.execute
    assert rows("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert rows("SELECT seq, to_target FROM statements_in_force ORDER BY seq").fetchall() == [
        (1, 0), (2, 1), (3, 0),
    ]  # fmt: skip
    indexes = {r[1] for r in rows("PRAGMA index_list(statements_in_force)")}
    assert "statements_in_force_to_target" in indexes
    assert "statements_in_force_by_target_seq" not in indexes
    ledger = Tables(db).ledger
    assert ledger.in_force("shop", 0, 10, targeted=True) == ([b"\x02"], None)
    assert ledger.in_force("ghost", 0, 10, targeted=True) == ([], None)  # if it registers
    assert ledger.in_force("bob", 0, 10, targeted=False) == ([b"\x01", b"\x02", b"\x03"], None)
    # An unblock goes where its block went (SPEC §7.5): not to ``ghost``, to ``shop``.
    assert not ledger.block_to_target("bob", "ghost") and ledger.block_to_target("bob", "shop")
    db.conn.close()
    connect(path).conn.close()  # and again: nothing left to do


def test_a_schema_10_database_has_sent_rekeyed_and_keeps_what_it_remembers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 11: ``sent`` keyed ``(msg_id, sender)``; every remembered SEND still answers
    its resend with the original time, and a reused id is still refused (SPEC §6.3.2)."""
    path = tmp_path / "r.db"
    conn = connect(path).conn
    conn.execute("DROP TABLE sent")
    conn.execute(
        "CREATE TABLE sent (sender TEXT NOT NULL, msg_id BLOB NOT NULL, digest BLOB NOT NULL,"
        " at INTEGER NOT NULL, PRIMARY KEY (sender, msg_id)) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX sent_by_age ON sent (at)")
    conn.executemany(
        "INSERT INTO sent (sender, msg_id, digest, at) VALUES (?, ?, ?, ?)",
        [("alice", b"a" * 16, b"d" * 32, 5), ("bob", b"a" * 16, b"e" * 32, 6)],
    )
    conn.execute("PRAGMA user_version=10")
    conn.close()
    with caplog.at_level(logging.INFO, logger="blindrelay"):
        db = connect(path)
    [upgraded] = [r for r in caplog.records if r.getMessage() == "schema_upgraded"]
    assert json.loads(JsonFormatter().format(upgraded))["rows"] == 2
    rows = db.execute
    assert rows("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    key = sorted((pk, name) for _, name, _, _, _, pk in rows("PRAGMA table_info(sent)") if pk)
    assert [name for _, name in key] == ["msg_id", "sender"]
    assert [r[1] for r in rows("PRAGMA index_list(sent)")].count("sent_by_age") == 1
    queue = Tables(db).queue
    assert queue.remembered("alice", b"a" * 16, b"d" * 32).at == 5
    assert queue.remembered("bob", b"a" * 16, b"e" * 32).at == 6
    assert queue.remembered("carol", b"a" * 16, b"d" * 32) is None
    with pytest.raises(MessageIdReused):
        queue.remembered("alice", b"a" * 16, b"e" * 32)
    db.conn.close()
    connect(path).conn.close()  # and again: nothing left to do


def test_message_ids_that_begin_with_the_clock_share_wal_pages(tmp_path: Path) -> None:
    """Issue 19: each SEND's row in ``sent`` used to cost a WAL page of its own. With the
    table keyed by ``msg_id`` first, a batch of SENDs whose ids begin with the sender's
    clock (SPEC §6.1) shares pages at the end of the tree, while random ids cost what they
    did; keyed by sender first (schema 10), both cost a page per SEND. Counted in WAL
    frames, which are deterministic for the same rows."""
    path = tmp_path / "r.db"
    db = connect(path, "NORMAL")
    db.conn.execute("PRAGMA wal_autocheckpoint=0")
    tables = Tables(db)
    rng = random.Random(19)
    senders = [Account(f"sender{i:02}", "user", b"") for i in range(10)]
    db.conn.executemany(  # thirty days of earlier SENDs, as a steady relay holds
        "INSERT INTO sent (sender, msg_id, digest, at) VALUES (?, ?, ?, ?)",
        [(f"sender{i % 10:02}", rng.randbytes(16), rng.randbytes(32), i) for i in range(20_000)],
    )
    page = db.execute("PRAGMA page_size").fetchone()[0]
    wal = Path(f"{path}-wal")

    def frames(msg_id: Callable[[int], bytes]) -> int:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for batch in range(30):
            db.conn.execute("BEGIN IMMEDIATE")
            for sender in senders:
                now = 1_000_000 + batch
                queued = tables.queue.add_if_new(
                    "recipient", sender, msg_id(now), "chat", None, None, b"x" * 64,
                    rng.randbytes(32), now,
                )  # fmt: skip
                assert queued is not None
            db.conn.execute("COMMIT")
        return (wal.stat().st_size - 32) // (24 + page)

    clocked = frames(lambda now: now.to_bytes(6, "big") + rng.randbytes(10))
    scattered = frames(lambda _now: rng.randbytes(16))
    db.conn.close()
    assert clocked < 0.6 * scattered, (clocked, scattered)


async def test_a_schema_5_database_counts_logins_from_its_upgrade(tmp_path: Path) -> None:
    """Version 6: ``accounts.login_seq``, the logins of each account numbered so that the
    newest wins on every relay process sharing a store (SPEC §1.2.3)."""
    path = tmp_path / "r.db"
    db = connect(path)
    db.conn.execute(
        "INSERT INTO accounts (handle, kind, identity_key, created_at)"
        " VALUES ('alice', 'user', x'00', 0)"
    )
    db.conn.execute("ALTER TABLE accounts DROP COLUMN login_seq")
    db.conn.execute("PRAGMA user_version=5")
    db.conn.close()
    writer = Writer(path, "FULL")
    await writer.start()
    try:
        logins = [(await writer.submit("login_counts", "alice", 0))[3] for _ in range(3)]
        assert logins == [1, 2, 3]
        await writer.submit("create_account", "bob", "user", b"b" * 32, 0)
        assert (await writer.submit("login_counts", "bob", 0))[3] == 1
    finally:
        await writer.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_queue_shares_are_kept_exact_and_a_failed_job_forgets_them(tmp_path: Path) -> None:
    """SPEC §6.3: shares of a long queue are counted once, then kept by inserts and
    acknowledgements; a job that fails after changing them in place empties them."""
    writer = committer(tmp_path / "r.db")
    carol = Account("carol", "user", b"c" * 32)
    writer.commit([lambda s: s.accounts.create(ALICE, 0), lambda s: s.accounts.create(carol, 0)])

    def add(sender: Account, n: int, stranger: bool) -> Callable[[Tables], object]:
        return lambda s: s.queue.add_if_new("bob", sender, n.to_bytes(16, "big"), "chat", None,
                                            None, b"x", b"d", 0, stranger)  # fmt: skip

    ids = [value[0] for _, value in writer.commit([add(ALICE, n, False) for n in range(3)])]
    writer.commit([add(carol, n, True) for n in range(10, 12)])

    def shares(s: Tables) -> tuple[int, dict[str, int]]:
        counted = s.queue.shares("bob", floor=1)
        return counted.strangers, dict(counted.senders)

    assert writer.commit([shares]) == [(True, (2, {"alice": 3, "carol": 2}))]
    writer.commit([add(carol, 12, True), lambda s: s.queue.acknowledge("bob", ids[:2])])
    assert writer.commit([shares]) == [(True, (3, {"alice": 1, "carol": 3}))]

    def add_then_fail(s: Tables) -> None:
        add(carol, 13, True)(s)
        raise QueueFull()

    writer.commit([add_then_fail])
    assert "bob" not in writer.tables.cache.shares
    assert writer.commit([shares]) == [(True, (3, {"alice": 1, "carol": 3}))]
