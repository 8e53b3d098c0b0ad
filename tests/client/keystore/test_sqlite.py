"""The SQLite key store as a file (client/keystore/sqlite.py): every kind persists, one
table per kind, a failed transaction leaves nothing, one thread per store.

What both stores share runs against both (test_keys.py, test_conversations.py …); the
at-rest format is test_sealing.py, one owner per file test_lock.py, older files
test_schema.py.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from blindrelay.client.keystore import (
    SCHEMA_VERSION,
    HeardHead,
    HeldCounts,
    IdentityStatus,
    KeyStoreCorrupted,
    LogFork,
    SqliteKeyStore,
)
from blindrelay.client.keystore.sealing import Sealer
from blindrelay.protocol.errors import IdentityKeyReused

from .files import PASSPHRASE, disk_bytes, dump, open_sqlite
from .samples import (
    KEY_A,
    KEY_B,
    NOW,
    message,
    one_time_prekey,
    our_identity,
    outgoing,
    signed_prekey,
)


def every_kind(store: SqliteKeyStore) -> None:
    """One record of every kind."""
    store.set_identity(our_identity())
    store.store_signed_prekey(signed_prekey(1))
    store.set_current_signed_prekey(1)
    store.store_one_time_prekeys([one_time_prekey(2)])
    store.allocate_prekey_ids(10)
    store.trust_identity("airline", KEY_A, NOW)
    store.record_identity_change("airline", KEY_B)
    store.commit_incoming(message(b"m" * 16), b"session")
    store.queue_outgoing(outgoing(1))
    store.hold_message("mallory", b"deliver")
    store.count_dropped("mallory")
    store.set_owed_receipts("dave", [b"r" * 16])
    store.note_wrote_to("bob")
    store.keep_statement("alice", b"statement")
    store.set_relay_key(KEY_A)
    store.set_registered()
    store.set_rotating_identity_seed(KEY_B)
    store.set_business_profile(b"profile")
    store.set_away_reply_period("alice", 5)
    store.set_chat_contact("alice", "user")
    store.set_consent_request("airline", ("utility",))
    store.keep_heard_head(HeardHead("carol", b"signed head", NOW, refusals=2))
    store.keep_log_fork(LogFork(KEY_A, b"first head", b"second head", "no proof"))


def test_every_kind_persists_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as first:
        every_kind(first)
    with SqliteKeyStore.open(path, PASSPHRASE) as again:
        assert again.get_identity() == our_identity()
        assert again.current_signed_prekey() == signed_prekey(1)
        assert again.one_time_prekey_ids() == [2]
        assert again.allocate_prekey_ids(1) == range(11, 12)
        assert again.check_identity("airline", KEY_A) is IdentityStatus.TRUSTED
        assert again.pending_identity_change("airline") == KEY_B
        assert again.load_session("airline") == b"session"
        assert again.is_processed("airline", b"m" * 16)
        assert again.pending_messages() == [message(b"m" * 16)]
        assert again.outbox() == [outgoing(1)]
        assert again.held_messages("mallory") == [b"deliver"]
        assert again.held_counts_of("mallory") == HeldCounts(1, 1)
        assert again.owed_receipts("dave") == [b"r" * 16]
        assert again.wrote_to() == {"bob"}
        assert again.kept_statements("alice") == [b"statement"]
        assert again.statement_counts() == {"alice": 1}
        assert (again.relay_key(), again.is_registered()) == (KEY_A, True)
        assert (again.rotating_identity_seed(), again.business_profile()) == (KEY_B, b"profile")
        assert again.away_reply_periods() == {"alice": 5}
        assert again.chat_contacts() == {"alice": "user"}
        assert again.consent_requests() == {"airline": ("utility",)}
        assert again.heard_heads() == [HeardHead("carol", b"signed head", NOW, refusals=2)]
        assert again.log_forks() == [LogFork(KEY_A, b"first head", b"second head", "no proof")]


def test_listing_one_kind_opens_no_row_of_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kind has its table: listing it never decrypts the other kinds' rows."""
    store = open_sqlite(tmp_path / "keys.db")
    every_kind(store)
    for i in range(3, 8):
        store.queue_outgoing(outgoing(i))
        store.store_session(f"contact{i}", b"session")
    opened: list[str] = []
    real_open = Sealer.open

    def counting(self: Sealer, table: str, k: bytes, sealed: bytes) -> list[object]:
        opened.append(table)
        return real_open(self, table, k, sealed)

    monkeypatch.setattr(Sealer, "open", counting)
    listings = {
        "outbox": store.outbox, "held_counts": store.held_counts,
        "statement_counts": store.statement_counts, "wrote_to": store.wrote_to,
        "owed_receipts": store.all_owed_receipts, "identity_changes": store.pending_identity_changes,
        "away_replies": store.away_reply_periods, "chat_contacts": store.chat_contacts,
        "consent_requests": store.consent_requests, "identities": store.trusted_identities,
        "one_time_prekeys": store.one_time_prekey_ids, "signed_prekeys": store.signed_prekeys,
        "heard_heads": store.heard_heads, "log_forks": store.log_forks,
    }  # fmt: skip
    for table, listing in listings.items():
        opened.clear()
        listing()
        assert set(opened) == {table}, listing
    store.close()


def test_the_key_index_is_rebuilt_for_a_file_made_before_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as first:
        first.trust_identity("airline", KEY_A, NOW)
        first.trust_identity("bob", KEY_B, NOW)

    def without_index(*, version: int) -> None:
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM key_owners")
            db.execute(f"PRAGMA user_version = {version}")
        db.close()

    without_index(version=SCHEMA_VERSION)  # as current: opened without an upgrade
    with SqliteKeyStore.open(path, PASSPHRASE) as older:
        # What a store of an earlier version could hold: one key pinned under two handles.
        older.approve_identity("twin", KEY_A, NOW + 1)
    without_index(version=0)
    for _ in range(2):  # the upgrade runs once and is idempotent
        with SqliteKeyStore.open(path, PASSPHRASE) as upgraded:
            assert (upgraded.identity_owner(KEY_A), upgraded.identity_owner(KEY_B)) == (
                "airline",
                "bob",
            )
            with pytest.raises(IdentityKeyReused):  # the first pinned keeps the key
                upgraded.trust_identity("twin", KEY_A, NOW + 2)


def test_a_replaced_key_leaves_the_index_and_a_stale_entry_owns_nothing(tmp_path: Path) -> None:
    """SPEC §13.8's index answers by key, the trust record stays the truth: a key the user
    replaced leaves the index (the file holds one row per pinned key, not one per key ever
    pinned), and an entry left behind anyway — here the old row put back as it was, as a
    file of an earlier SDK could hold it — names no owner, so the key is free again."""
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.trust_identity("airline", KEY_A, NOW)
    with sqlite3.connect(path) as db:
        [old_row] = db.execute("SELECT k, v FROM key_owners").fetchall()
    db.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as store:
        store.approve_identity("airline", KEY_B, NOW + 1)  # a key change the user approved
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM key_owners").fetchone() == (1,)
        db.execute("INSERT INTO key_owners (k, v) VALUES (?, ?)", old_row)
    db.close()

    with SqliteKeyStore.open(path, PASSPHRASE) as store:
        assert store.identity_owner(KEY_A) is None
        assert store.trust_identity("successor", KEY_A, NOW + 2) is IdentityStatus.NEW
        assert store.identity_owner(KEY_B) == "airline"


def test_missing_store_is_not_created_unless_asked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SqliteKeyStore.open(tmp_path / "absent.db", PASSPHRASE)
    assert not (tmp_path / "absent.db").exists()


def test_a_file_that_is_not_a_key_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(KeyStoreCorrupted):
        SqliteKeyStore.open(other, PASSPHRASE)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(KeyStoreCorrupted):
        SqliteKeyStore.open(junk, PASSPHRASE)


def test_taken_one_time_prekey_is_gone_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.store_one_time_prekeys([one_time_prekey(1), one_time_prekey(2)])
    sealed = {v for (v,) in sqlite3.connect(path).execute("SELECT v FROM one_time_prekeys")}
    with SqliteKeyStore.open(path, PASSPHRASE) as store:
        assert store.take_one_time_prekey(1) == one_time_prekey(1)
    with SqliteKeyStore.open(path, PASSPHRASE) as store:
        assert store.take_one_time_prekey(1) is None
        assert store.one_time_prekey_ids() == [2]
    remaining = {v for (v,) in sqlite3.connect(path).execute("SELECT v FROM one_time_prekeys")}
    (taken,) = sealed - remaining
    # secure_delete zeroes the freed cell: not even the sealed bytes survive.
    assert taken not in disk_bytes(path)


def test_failed_commit_incoming_rolls_back_everything(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.store_session("airline", b"session-before")
        store.store_one_time_prekeys([one_time_prekey(3)])
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT ON inbox BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    conn.close()
    store = SqliteKeyStore.open(path, PASSPHRASE)
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        store.commit_incoming(message(b"m" * 16), b"session-after", used_one_time_prekey=3)
    # The session, the prekey and the processed id were written before the failure: undone.
    assert store.load_session("airline") == b"session-before"
    assert store.one_time_prekey_ids() == [3]
    assert not store.is_processed("airline", b"m" * 16)
    assert store.pending_messages() == []
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER disk_full")
    conn.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as again:
        assert again.load_session("airline") == b"session-before"
        assert not again.is_processed("airline", b"m" * 16)
        assert again.commit_incoming(message(b"m" * 16), b"session-after") is True


def test_store_refuses_use_from_another_thread(tmp_path: Path) -> None:

    errors: list[BaseException] = []
    with open_sqlite(tmp_path / "keys.db") as store:

        def use() -> None:
            try:
                store.load_session("airline")
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=use)
        worker.start()
        worker.join()
    assert len(errors) == 1
    assert isinstance(errors[0], sqlite3.ProgrammingError)


def test_rows_read_back_from_memory_are_what_the_file_holds(tmp_path: Path) -> None:
    """The decrypted-row cache is written through and forgets whatever a rollback undid."""
    path = tmp_path / "keys.db"
    store = open_sqlite(path)
    store.store_session("bob", b"s1")
    store.record_identity_change("bob", KEY_A)
    assert store.load_session("bob") == b"s1" and store.pending_identity_change("eve") is None
    with pytest.raises(RuntimeError), store.atomic():
        store.store_session("bob", b"s2")
        store.record_identity_change("eve", KEY_B)
        store.clear_identity_change("bob")
        with store.atomic():
            store.record_identity_change("bob", KEY_B)
        assert store.load_session("bob") == b"s2" and store.pending_identity_change("bob") == KEY_B
        raise RuntimeError("roll back")
    assert (store.load_session("bob"), store.pending_identity_change("bob")) == (b"s1", KEY_A)
    assert store.pending_identity_change("eve") is None
    with store.atomic():  # an inner block undone, the outer one kept
        store.record_identity_change("bob", KEY_B)
        with pytest.raises(RuntimeError), store.atomic():
            store.store_session("bob", b"s3")
            raise RuntimeError("roll back the savepoint")
    assert (store.load_session("bob"), store.pending_identity_change("bob")) == (b"s1", KEY_B)
    store.delete_session("bob")
    assert store.load_session("bob") is None
    store.close()
    reopened = open_sqlite(path)  # and the file agrees
    assert (reopened.load_session("bob"), reopened.pending_identity_change("bob")) == (None, KEY_B)
    assert reopened.pending_identity_change("eve") is None
    reopened.close()


def test_reopening_a_current_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        every_kind(store)
    before = dump(path)
    SqliteKeyStore.open(path, PASSPHRASE).close()
    assert dump(path) == before
