"""The SQLite key store as a file: sealed rows, one table per kind, one owner at a time.

What both stores share is in test_keystore.py; the upgrade of older files in
test_keystore_upgrade.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blindrelay.client.keystore import (
    HeldCounts,
    IdentityStatus,
    IncomingMessage,
    KeyStoreCorrupted,
    OneTimePreKeyRecord,
    OurIdentity,
    OutboxEntry,
    SignedPreKeyRecord,
    SqliteKeyStore,
    WrongPassphrase,
)
from blindrelay.client.keystore.sealing import Sealer
from blindrelay.protocol.errors import IdentityKeyReused

from .keystore_files import FAST, PASSPHRASE, dump, file_keys, open_sqlite

KEY_A = b"\xa1" * 32
KEY_B = b"\xb2" * 32
NOW = 1_700_000_000_000


def our_identity(seed: bytes = b"\x01" * 32) -> OurIdentity:
    return OurIdentity("alice", "user", "wss://relay.example", seed, b"\x02" * 32)


def signed_prekey(key_id: int, private: bytes = b"\x03" * 32) -> SignedPreKeyRecord:
    return SignedPreKeyRecord(key_id, private, b"\x04" * 32, b"\x05" * 64, NOW)


def one_time_prekey(key_id: int, private: bytes = b"\x06" * 32) -> OneTimePreKeyRecord:
    return OneTimePreKeyRecord(key_id, private, bytes([key_id % 256]) * 32)


def message(msg_id: bytes, sender: str = "airline", body: bytes = b"hello") -> IncomingMessage:
    return IncomingMessage(msg_id, sender, NOW, body)


def outgoing(n: int, to: str = "bob", envelope: bytes = b"envelope") -> OutboxEntry:
    return OutboxEntry(NOW + n, bytes([n]) * 16, to, envelope, "chat")


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

    without_index(version=2)
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


def test_log_rows_cannot_move_between_groups_or_positions(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.keep_statement("alice", b"first")
        store.keep_statement("alice", b"second")
        store.keep_statement("bob", b"bob's")
    with sqlite3.connect(path) as conn:
        (s1, v1), (s2, v2), (s3, _) = conn.execute("SELECT seq, v FROM statements ORDER BY seq")
        conn.execute("UPDATE statements SET v = ? WHERE seq = ?", [v2, s1])
        conn.execute("UPDATE statements SET v = ? WHERE seq = ?", [v1, s2])
    conn.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as store, pytest.raises(KeyStoreCorrupted):
        store.kept_statements("alice")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE statements SET v = ? WHERE seq = ?", [v1, s1])
        conn.execute("UPDATE statements SET v = ? WHERE seq = ?", [v2, s2])
        g = conn.execute("SELECT g FROM statements WHERE seq = ?", [s1]).fetchone()[0]
        conn.execute("UPDATE statements SET g = ? WHERE seq = ?", [g, s3])  # bob's under alice
    conn.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as store, pytest.raises(KeyStoreCorrupted):
        store.kept_statements("alice")


def test_rows_cannot_move_between_tables(tmp_path: Path) -> None:
    """The AD names the table: a wrote-to row copied into chat_contacts fails to open."""
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.note_wrote_to("alice")
        store.set_chat_contact("alice", "user")
    keys = file_keys(path)
    with sqlite3.connect(path) as conn:
        ((sealed,),) = conn.execute("SELECT v FROM wrote_to")
        k = keys.lookup("chat_contacts", b"alice")
        conn.execute("UPDATE chat_contacts SET v = ? WHERE k = ?", [sealed, k])
    conn.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as store, pytest.raises(KeyStoreCorrupted):
        store.chat_contacts()


def test_wrong_passphrase_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    open_sqlite(path).close()
    with pytest.raises(WrongPassphrase):
        SqliteKeyStore.open(path, "incorrect horse")


def test_passphrase_is_unicode_normalised(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    open_sqlite(path, "caf\u00e9").close()  # precomposed é
    SqliteKeyStore.open(path, "cafe\u0301").close()  # e + combining accent


def test_missing_store_is_not_created_unless_asked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SqliteKeyStore.open(tmp_path / "absent.db", PASSPHRASE)
    assert not (tmp_path / "absent.db").exists()


def test_out_of_range_argon2_cost_is_refused_before_any_file_is_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opslimit"):
        SqliteKeyStore.open(tmp_path / "k.db", PASSPHRASE, create=True, opslimit=0)
    assert not (tmp_path / "k.db").exists()


def test_a_file_that_is_not_a_key_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(KeyStoreCorrupted):
        SqliteKeyStore.open(other, PASSPHRASE)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(KeyStoreCorrupted):
        SqliteKeyStore.open(junk, PASSPHRASE)


def test_a_planted_header_cannot_demand_huge_argon2_memory(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    open_sqlite(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE header SET memlimit = ?", [2**40])
    conn.close()
    with pytest.raises(KeyStoreCorrupted, match="Argon2"):
        SqliteKeyStore.open(path, PASSPHRASE)


def test_altered_argon2_costs_fail_as_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    open_sqlite(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE header SET opslimit = opslimit + 1")
    conn.close()
    with pytest.raises(WrongPassphrase):
        SqliteKeyStore.open(path, PASSPHRASE)


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


def disk_bytes(path: Path) -> bytes:
    parts = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return b"".join(part.read_bytes() for part in parts if part.exists())


def test_no_secret_or_contact_handle_reaches_the_disk_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    canaries = {
        "seed": b"CANARY-SEED-0123456789abcdefghij",
        "spk": b"CANARY-SPK-0123456789abcdefghijk",
        "otpk": b"CANARY-OTPK-0123456789abcdefghij",
        "session": b"CANARY-SESSION-blob-with-ratchet-state",
        "body": b"CANARY-message-body",
        "envelope": b"CANARY-outbox-envelope",
        "held": b"CANARY-held-deliver",
        "statement": b"CANARY-kept-statement",
        "profile": b"CANARY-business-profile",
        "rotating": b"CANARY-rotating-seed-0123456789a",
    }
    handles = ["zz-canary-contact", "yy-canary-business", "xx-canary-requester"]
    store = open_sqlite(path)
    store.set_identity(our_identity(seed=canaries["seed"]))
    store.store_signed_prekey(signed_prekey(1, private=canaries["spk"]))
    store.store_one_time_prekeys([one_time_prekey(2, private=canaries["otpk"])])
    store.store_session(handles[0], canaries["session"])
    store.trust_identity(handles[0], KEY_A, NOW)
    store.record_identity_change(handles[0], KEY_B)
    store.commit_incoming(message(b"i" * 16, sender=handles[1], body=canaries["body"]), b"s")
    store.queue_outgoing(outgoing(1, to=handles[1], envelope=canaries["envelope"]))
    store.hold_message(handles[2], canaries["held"])
    store.keep_statement(handles[1], canaries["statement"])
    store.set_owed_receipts(handles[2], [b"r" * 16])
    store.note_wrote_to(handles[0])
    store.set_business_profile(canaries["profile"])
    store.set_rotating_identity_seed(canaries["rotating"])
    store.set_away_reply_period(handles[2], 1)
    store.set_chat_contact(handles[1], "business")
    store.set_consent_request(handles[1], ("utility",))

    def assert_clean() -> None:
        raw = disk_bytes(path)
        for name, canary in canaries.items():
            assert canary not in raw, f"{name} found on disk in clear"
        for handle in handles:
            assert handle.encode() not in raw, f"handle {handle} found on disk"
        assert b"alice" not in raw  # even our own handle is sealed
        assert KEY_A not in raw and KEY_B not in raw  # contacts' keys, even in the key index

    assert path.with_name(path.name + "-wal").exists()  # WAL mode, still open
    assert_clean()
    store.close()
    assert_clean()


def test_records_cannot_be_swapped_between_rows(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.store_session("airline", b"airline-session")
        store.store_session("bob", b"bob-session")
    with sqlite3.connect(path) as conn:
        (k1, v1), (k2, v2) = conn.execute("SELECT k, v FROM sessions").fetchall()
        conn.execute("UPDATE sessions SET v = ? WHERE k = ?", [v2, k1])
        conn.execute("UPDATE sessions SET v = ? WHERE k = ?", [v1, k2])
    conn.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as store, pytest.raises(KeyStoreCorrupted):
        store.load_session("airline")


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


def test_change_passphrase_rewraps_the_master_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.store_session("airline", b"kept")
        with pytest.raises(WrongPassphrase):
            store.change_passphrase("not it", "new one", **FAST)
        store.change_passphrase(PASSPHRASE, "new one", **FAST)
    with pytest.raises(WrongPassphrase):
        SqliteKeyStore.open(path, PASSPHRASE)
    with SqliteKeyStore.open(path, "new one") as store:
        assert store.load_session("airline") == b"kept"


def test_store_refuses_use_from_another_thread(tmp_path: Path) -> None:
    import threading

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


def test_rows_are_keyed_and_sealed_as_the_format_says(tmp_path: Path) -> None:
    """Checked with keys derived here from the passphrase (keystore_files), so files
    written before and after any change of the code agree."""
    path = tmp_path / "keys.db"
    store = open_sqlite(path)
    store.record_identity_change("airline", KEY_B)
    store.keep_statement("alice", b"statement")
    store.close()
    keys = file_keys(path)
    k = keys.lookup("identity_changes", b"airline")
    with sqlite3.connect(path) as db:
        ((sealed,),) = db.execute("SELECT v FROM identity_changes WHERE k = ?", [k])
        ((seq, g, logged),) = db.execute("SELECT seq, g, v FROM statements")
    db.close()
    assert keys.open("identity_changes", k, sealed) == ["airline", KEY_B]
    assert g == keys.lookup("statements", b"alice")
    assert keys.open("statements", g + seq.to_bytes(8, "big"), logged) == ["alice", b"statement"]

    resealed = keys.seal("identity_changes", k, ["airline", KEY_A])  # a row sealed here reads
    with sqlite3.connect(path) as db:
        db.execute("UPDATE identity_changes SET v = ? WHERE k = ?", [resealed, k])
    db.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as reopened:
        assert reopened.pending_identity_change("airline") == KEY_A
    with sqlite3.connect(path) as db:
        db.execute("UPDATE identity_changes SET v = ? WHERE k = ?", [resealed[:20], k])
    db.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as reopened, pytest.raises(KeyStoreCorrupted):
        reopened.pending_identity_change("airline")


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


def test_a_store_file_is_owned_by_one_open_store_at_a_time(tmp_path: Path) -> None:
    """Rows are kept decrypted in memory: nothing else may write the file meanwhile."""
    import subprocess
    import sys

    from blindrelay.client.keystore import KeyStoreInUse

    path = tmp_path / "keys.db"
    store = open_sqlite(path)
    store.store_session("bob", b"s1")
    with pytest.raises(KeyStoreInUse):
        open_sqlite(path)
    other = subprocess.run(
        [sys.executable, "-c", "import sys\n"
         "from blindrelay.client.keystore import KeyStoreInUse, SqliteKeyStore\n"
         "try:\n    SqliteKeyStore.open(sys.argv[1], 'x')\n"
         "except KeyStoreInUse:\n    sys.exit(3)\n", str(path)],
        check=False,
    )  # fmt: skip
    assert other.returncode == 3
    assert store.load_session("bob") == b"s1"  # the refused opens changed nothing
    store.close()
    with open_sqlite(path) as again:
        assert again.load_session("bob") == b"s1"


def test_reopening_a_current_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        every_kind(store)
    before = dump(path)
    SqliteKeyStore.open(path, PASSPHRASE).close()
    assert dump(path) == before
