"""Encryption at rest of the SQLite key store (client/keystore/sealing.py): the passphrase,
the wrapped master key, rows sealed to their table and row, nothing in clear on disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blindrelay.client.keystore import (
    KeyStoreCorrupted,
    SqliteKeyStore,
    WrongPassphrase,
)

from .files import FAST, PASSPHRASE, disk_bytes, file_keys, open_sqlite
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


def test_out_of_range_argon2_cost_is_refused_before_any_file_is_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opslimit"):
        SqliteKeyStore.open(tmp_path / "k.db", PASSPHRASE, create=True, opslimit=0)
    assert not (tmp_path / "k.db").exists()


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


def test_rows_are_keyed_and_sealed_as_the_format_says(tmp_path: Path) -> None:
    """Checked with keys derived here from the passphrase (keystore/files.py), so files
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


def test_every_sealed_value_has_its_own_nonce(tmp_path: Path) -> None:
    """XChaCha20-Poly1305 under one record key: a nonce used twice would leak the XOR of
    two plaintexts (and forgeries). Each write draws a fresh random one, also when a row
    is rewritten with the same fields."""
    path = tmp_path / "keys.db"

    def sealed_values() -> list[bytes]:
        with sqlite3.connect(path) as db:
            values = [v for (v,) in db.execute("SELECT v FROM identity_changes")]
        db.close()
        return values

    with open_sqlite(path) as store:
        store.record_identity_change("airline", KEY_A)
    [first] = sealed_values()
    with SqliteKeyStore.open(path, PASSPHRASE) as store:
        store.record_identity_change("airline", KEY_A)  # the same row, the same fields
        store.record_identity_change("bob", KEY_A)
        store.record_identity_change("carol", KEY_A)
    sealed = [first, *sealed_values()]
    assert len(sealed) == 4 and len({value[:24] for value in sealed}) == 4


def test_a_sealed_value_that_is_not_a_list_of_fields_is_corrupted(tmp_path: Path) -> None:
    """A row that authenticates but does not hold a list of fields (a map, say) is
    refused as KeyStoreCorrupted, not handed to a record's constructor."""
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.record_identity_change("airline", KEY_B)
    keys = file_keys(path)
    k = keys.lookup("identity_changes", b"airline")
    planted = keys.seal("identity_changes", k, {"handle": "airline"})  # type: ignore[arg-type]
    with sqlite3.connect(path) as db:
        db.execute("UPDATE identity_changes SET v = ? WHERE k = ?", [planted, k])
    db.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as reopened, pytest.raises(KeyStoreCorrupted):
        reopened.pending_identity_change("airline")
