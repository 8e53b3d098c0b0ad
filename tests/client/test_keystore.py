"""Client key custody (client/keystore.py): both stores alike; SQLite keeps secrets sealed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id as argon2id
import pytest

from blindrelay.client.keystore import (
    IdentityStatus,
    IncomingMessage,
    KeyStore,
    KeyStoreCorrupted,
    MemoryKeyStore,
    OneTimePreKeyRecord,
    OurIdentity,
    SignedPreKeyRecord,
    SqliteKeyStore,
    TrustedIdentity,
    WrongPassphrase,
)
from blindrelay.protocol.errors import IdentityKeyReused, UntrustedIdentity

FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
PASSPHRASE = "correct horse battery staple"
KEY_A = b"\xa1" * 32
KEY_B = b"\xb2" * 32
NOW = 1_700_000_000_000


def open_sqlite(path: Path, passphrase: str = PASSPHRASE, **kwargs: Any) -> SqliteKeyStore:
    return SqliteKeyStore.open(path, passphrase, create=True, **FAST, **kwargs)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    made: KeyStore = (
        MemoryKeyStore(max_processed_ids=5)
        if request.param == "memory"
        else open_sqlite(tmp_path / "keys.db", max_processed_ids=5)
    )
    yield made
    made.close()


def our_identity(seed: bytes = b"\x01" * 32) -> OurIdentity:
    return OurIdentity("alice", "user", "wss://relay.example", seed, b"\x02" * 32)


def signed_prekey(key_id: int, private: bytes = b"\x03" * 32) -> SignedPreKeyRecord:
    return SignedPreKeyRecord(key_id, private, b"\x04" * 32, b"\x05" * 64, NOW)


def one_time_prekey(key_id: int, private: bytes = b"\x06" * 32) -> OneTimePreKeyRecord:
    return OneTimePreKeyRecord(key_id, private, bytes([key_id % 256]) * 32)


def message(msg_id: bytes, sender: str = "airline", body: bytes = b"hello") -> IncomingMessage:
    return IncomingMessage(msg_id, sender, NOW, body)


# --- Behaviour common to both implementations --------------------------------


def test_both_implementations_satisfy_the_protocol(store: KeyStore) -> None:
    assert isinstance(store, KeyStore)


def test_identity_round_trips(store: KeyStore) -> None:
    assert store.get_identity() is None
    store.set_identity(our_identity())
    assert store.get_identity() == our_identity()


def test_identity_repr_never_shows_the_seed() -> None:
    assert (b"\x01" * 32).hex() not in repr(our_identity())
    assert repr(b"\x01" * 32) not in repr(our_identity())


def test_identity_refuses_wrong_seed_length_and_unknown_kind() -> None:
    with pytest.raises(ValueError, match="identity_seed"):
        OurIdentity("alice", "user", "wss://r", b"\x01" * 31, b"\x02" * 32)
    with pytest.raises(ValueError, match="account_kind"):
        OurIdentity("alice", "admin", "wss://r", b"\x01" * 32, b"\x02" * 32)  # type: ignore[arg-type]


def test_signed_prekeys_are_kept_by_id_with_a_current_one(store: KeyStore) -> None:
    store.store_signed_prekey(signed_prekey(7))
    store.store_signed_prekey(signed_prekey(3))
    assert [record.key_id for record in store.signed_prekeys()] == [3, 7]
    assert store.load_signed_prekey(7) == signed_prekey(7)
    assert store.current_signed_prekey() is None
    store.set_current_signed_prekey(7)
    assert store.current_signed_prekey() == signed_prekey(7)
    with pytest.raises(KeyError):
        store.set_current_signed_prekey(99)
    store.remove_signed_prekey(3)
    assert store.load_signed_prekey(3) is None


def test_taking_a_one_time_prekey_deletes_it(store: KeyStore) -> None:
    store.store_one_time_prekeys([one_time_prekey(i) for i in (1, 2, 3)])
    assert store.take_one_time_prekey(2) == one_time_prekey(2)
    assert store.take_one_time_prekey(2) is None
    assert store.one_time_prekey_ids() == [1, 3]


def test_prekey_ids_are_never_handed_out_twice(store: KeyStore) -> None:
    first = store.allocate_prekey_ids(100)
    second = store.allocate_prekey_ids(1)
    assert first == range(1, 101)
    assert second == range(101, 102)
    with pytest.raises(ValueError):
        store.allocate_prekey_ids(0)


def test_sessions_are_opaque_bytes_per_handle(store: KeyStore) -> None:
    assert store.load_session("airline") is None
    store.store_session("airline", b"state-1")
    store.store_session("bob", b"state-b")
    store.store_session("airline", b"state-2")
    assert store.load_session("airline") == b"state-2"
    store.delete_session("airline")
    assert store.load_session("airline") is None
    assert store.load_session("bob") == b"state-b"


def test_first_identity_key_is_trusted_on_first_use(store: KeyStore) -> None:
    assert store.check_identity("airline", KEY_A) is IdentityStatus.NEW
    with pytest.raises(UntrustedIdentity, match="not yet trusted"):
        store.require_trusted("airline", KEY_A)
    assert store.trust_identity("airline", KEY_A, NOW) is IdentityStatus.NEW
    assert store.trust_identity("airline", KEY_A, NOW + 5) is IdentityStatus.TRUSTED
    store.require_trusted("airline", KEY_A)
    trusted = store.get_trusted_identity("airline")
    assert trusted is not None
    assert (trusted.identity_key, trusted.first_seen_ms, trusted.verified) == (KEY_A, NOW, False)


def test_changed_identity_key_is_never_accepted_silently(store: KeyStore) -> None:
    store.trust_identity("airline", KEY_A, NOW)
    assert store.check_identity("airline", KEY_B) is IdentityStatus.CHANGED
    with pytest.raises(UntrustedIdentity) as raised:
        store.require_trusted("airline", KEY_B)
    assert raised.value.handle == "airline"
    with pytest.raises(UntrustedIdentity):
        store.trust_identity("airline", KEY_B, NOW + 1)
    # Still the old key after both attempts.
    assert store.check_identity("airline", KEY_A) is IdentityStatus.TRUSTED


def test_user_approval_replaces_a_changed_key(store: KeyStore) -> None:
    store.trust_identity("airline", KEY_A, NOW)
    store.approve_identity("airline", KEY_A, NOW + 1, verified=True)
    verified = store.get_trusted_identity("airline")
    assert verified is not None
    assert (verified.first_seen_ms, verified.verified) == (NOW, True)

    store.approve_identity("airline", KEY_B, NOW + 2)
    store.require_trusted("airline", KEY_B)
    assert store.check_identity("airline", KEY_A) is IdentityStatus.CHANGED
    replaced = store.get_trusted_identity("airline")
    assert replaced is not None
    # A new key restarts first-seen and must be verified again.
    assert (replaced.first_seen_ms, replaced.verified) == (NOW + 2, False)


def test_one_identity_key_is_pinned_for_one_handle_only(store: KeyStore) -> None:
    """SPEC §13.8: trust on first use never lets one key stand for two handles."""
    assert store.identity_owner(KEY_A) is None
    store.trust_identity("airline", KEY_A, NOW)
    assert store.identity_owner(KEY_A) == "airline"

    with pytest.raises(IdentityKeyReused) as raised:
        store.trust_identity("impostor", KEY_A, NOW + 1)
    assert (raised.value.handle, raised.value.owner) == ("impostor", "airline")
    with pytest.raises(IdentityKeyReused):
        store.approve_identity("impostor", KEY_A, NOW + 1)
    assert store.get_trusted_identity("impostor") is None
    assert store.identity_owner(KEY_A) == "airline"

    store.approve_identity("airline", KEY_A, NOW + 2, verified=True)
    assert store.identity_owner(KEY_A) == "airline"
    store.approve_identity("airline", KEY_B, NOW + 3)  # a key change the user approved
    assert (store.identity_owner(KEY_A), store.identity_owner(KEY_B)) == (None, "airline")
    assert store.trust_identity("successor", KEY_A, NOW + 4) is IdentityStatus.NEW  # freed
    assert store.identity_owner(KEY_A) == "successor"


def test_a_rolled_back_pin_leaves_the_key_unowned(store: KeyStore) -> None:
    with pytest.raises(RuntimeError), store.atomic():
        store.trust_identity("airline", KEY_A, NOW)
        assert store.identity_owner(KEY_A) == "airline"
        raise RuntimeError("crash before the commit")
    assert store.identity_owner(KEY_A) is None
    assert store.trust_identity("other", KEY_A, NOW) is IdentityStatus.NEW


def test_identity_keys_must_be_32_bytes(store: KeyStore) -> None:
    with pytest.raises(ValueError):
        store.check_identity("airline", b"\x01" * 31)


def test_processed_ids_are_remembered_and_the_oldest_pruned(store: KeyStore) -> None:
    ids = [bytes([i]) * 16 for i in range(8)]
    for msg_id in ids:
        store.mark_processed("airline", msg_id)
    store.mark_processed("airline", ids[-1])  # idempotent
    # The fixture caps memory at 5 ids.
    assert [store.is_processed("airline", msg_id) for msg_id in ids] == [False] * 3 + [True] * 5


def test_commit_incoming_stores_session_id_and_message_together(store: KeyStore) -> None:
    assert store.commit_incoming(message(b"m1" * 8), b"session-after-m1") is True
    assert store.load_session("airline") == b"session-after-m1"
    assert store.is_processed("airline", b"m1" * 8)
    assert store.pending_messages() == [message(b"m1" * 8)]


def test_redelivered_message_changes_nothing(store: KeyStore) -> None:
    store.commit_incoming(message(b"m1" * 8), b"session-after-m1")
    store.consume("airline", b"m1" * 8)
    assert store.commit_incoming(message(b"m1" * 8, body=b"again"), b"other") is False
    assert store.load_session("airline") == b"session-after-m1"
    assert store.pending_messages() == []


def test_inbox_keeps_arrival_order_until_consumed(store: KeyStore) -> None:
    for i in (3, 1, 2):
        store.commit_incoming(message(bytes([i]) * 16, body=bytes([i])), bytes([i]))
    assert [m.body for m in store.pending_messages()] == [b"\x03", b"\x01", b"\x02"]
    assert store.consume("airline", b"\x01" * 16) is True
    assert store.consume("airline", b"\x01" * 16) is False
    assert [m.body for m in store.pending_messages()] == [b"\x03", b"\x02"]


def test_state_is_small_key_value_bytes(store: KeyStore) -> None:
    assert store.get_state("consent:airline") is None
    store.set_state("consent:airline", b"receipt")
    assert store.get_state("consent:airline") == b"receipt"
    store.set_state("consent:airline", b"")
    assert store.get_state("consent:airline") == b""
    store.delete_state("consent:airline")
    assert store.get_state("consent:airline") is None
    with pytest.raises(TypeError):
        store.set_state("", b"x")


def test_processed_ids_are_per_sender(store: KeyStore) -> None:
    """SPEC §6.4.3: deduplicate by (sender, msg_id) — another sender may pick the same id."""
    assert store.commit_incoming(message(b"m" * 16, sender="airline"), b"s1") is True
    assert store.commit_incoming(message(b"m" * 16, sender="shop"), b"s2") is True
    assert store.is_processed("airline", b"m" * 16) and store.is_processed("shop", b"m" * 16)
    assert not store.is_processed("bank", b"m" * 16)
    assert [m.sender for m in store.pending_messages()] == ["airline", "shop"]
    assert store.consume("shop", b"m" * 16) is True
    assert [m.sender for m in store.pending_messages()] == ["airline"]


def test_state_items_lists_one_prefix_sorted(store: KeyStore) -> None:
    for key in ("receipts/b", "receipts/a", "outbox/x"):
        store.set_state(key, key.encode())
    assert store.state_items("receipts/") == [
        ("receipts/a", b"receipts/a"),
        ("receipts/b", b"receipts/b"),
    ]
    assert store.state_items("none/") == []


def test_atomic_block_rolls_back_every_write_on_error(store: KeyStore) -> None:
    store.store_session("airline", b"before")
    store.set_state("outbox/1", b"kept")
    store.commit_incoming(message(b"a" * 16), b"before")
    with pytest.raises(RuntimeError, match="crash"), store.atomic():
        store.store_session("airline", b"after")
        store.store_session("shop", b"new")
        store.set_state("outbox/2", b"envelope")
        store.delete_state("outbox/1")
        store.consume("airline", b"a" * 16)
        store.commit_incoming(message(b"b" * 16, sender="bank"), b"bank-session")
        raise RuntimeError("crash")
    assert store.load_session("airline") == b"before"
    assert store.load_session("shop") is None and store.load_session("bank") is None
    assert store.state_items("outbox/") == [("outbox/1", b"kept")]
    assert store.pending_messages() == [message(b"a" * 16)]
    assert not store.is_processed("bank", b"b" * 16)


def test_atomic_blocks_nest_like_savepoints(store: KeyStore) -> None:
    with store.atomic():
        store.set_state("outer", b"1")
        with pytest.raises(RuntimeError), store.atomic():
            store.set_state("inner", b"2")
            store.set_state("outer", b"changed")
            raise RuntimeError
        store.set_state("after", b"3")
    assert store.state_items("") == [("after", b"3"), ("outer", b"1")]


def test_logs_keep_each_group_in_append_order(store: KeyStore) -> None:
    for i in range(5):
        store.append_log("statements/alice", b"a%d" % i)
        store.append_log("statements/bob", b"b%d" % i)
    assert store.read_log("statements/alice") == [b"a0", b"a1", b"a2", b"a3", b"a4"]
    assert store.read_log("statements/alice", start=3) == [b"a3", b"a4"]
    assert store.read_log("statements/alice", start=9) == []
    assert store.read_log("statements/carol") == []
    store.delete_log("statements/alice", count=2)
    assert store.read_log("statements/alice") == [b"a2", b"a3", b"a4"]
    store.append_log("statements/alice", b"a5")
    assert store.read_log("statements/alice", start=2) == [b"a4", b"a5"]
    store.delete_log("statements/alice")
    store.delete_log("statements/nobody")
    assert store.read_log("statements/alice") == []
    assert store.read_log("statements/bob") == [b"b0", b"b1", b"b2", b"b3", b"b4"]


def test_atomic_block_rolls_back_log_writes_in_order(store: KeyStore) -> None:
    for i in range(3):
        store.append_log("held/mallory", b"%d" % i)
    with pytest.raises(RuntimeError), store.atomic():
        store.delete_log("held/mallory", count=2)
        store.append_log("held/mallory", b"3")
        store.append_log("held/eve", b"x")
        raise RuntimeError
    assert store.read_log("held/mallory") == [b"0", b"1", b"2"]
    assert store.read_log("held/eve") == []
    with pytest.raises(RuntimeError), store.atomic():
        store.delete_log("held/mallory")
        raise RuntimeError
    store.append_log("held/mallory", b"3")
    assert store.read_log("held/mallory") == [b"0", b"1", b"2", b"3"]


# --- SQLite only -------------------------------------------------------------


def test_logs_persist_and_a_file_made_before_them_opens(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as first:
        first.append_log("statements/alice", b"one")
        first.set_state("k", b"v")
    with SqliteKeyStore.open(path, PASSPHRASE) as again:
        again.append_log("statements/alice", b"two")
        assert again.read_log("statements/alice") == [b"one", b"two"]
    with sqlite3.connect(path) as db:  # as a file written before logs existed
        db.execute("DROP TABLE logs")
    db.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as older:
        assert older.get_state("k") == b"v" and older.read_log("statements/alice") == []
        older.append_log("statements/alice", b"three")
        assert older.read_log("statements/alice") == [b"three"]


def test_log_rows_cannot_move_between_groups_or_positions(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as store:
        store.append_log("statements/alice", b"first")
        store.append_log("statements/alice", b"second")
        store.append_log("statements/bob", b"bob's")
    with sqlite3.connect(path) as conn:
        (s1, v1), (s2, v2), (s3, _) = conn.execute("SELECT seq, v FROM logs ORDER BY seq")
        conn.execute("UPDATE logs SET v = ? WHERE seq = ?", [v2, s1])
        conn.execute("UPDATE logs SET v = ? WHERE seq = ?", [v1, s2])
    conn.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as store, pytest.raises(KeyStoreCorrupted):
        store.read_log("statements/alice")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE logs SET v = ? WHERE seq = ?", [v1, s1])
        conn.execute("UPDATE logs SET v = ? WHERE seq = ?", [v2, s2])
        g = conn.execute("SELECT g FROM logs WHERE seq = ?", [s1]).fetchone()[0]
        conn.execute("UPDATE logs SET g = ? WHERE seq = ?", [g, s3])  # bob's row under alice
    conn.close()
    with SqliteKeyStore.open(path, PASSPHRASE) as store, pytest.raises(KeyStoreCorrupted):
        store.read_log("statements/alice")


def test_everything_persists_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as first:
        first.set_identity(our_identity())
        first.store_signed_prekey(signed_prekey(1))
        first.set_current_signed_prekey(1)
        first.store_one_time_prekeys([one_time_prekey(2)])
        first.allocate_prekey_ids(10)
        first.trust_identity("airline", KEY_A, NOW)
        first.commit_incoming(message(b"m" * 16), b"session")
        first.set_state("k", b"v")
    with SqliteKeyStore.open(path, PASSPHRASE) as again:
        assert again.get_identity() == our_identity()
        assert again.current_signed_prekey() == signed_prekey(1)
        assert again.one_time_prekey_ids() == [2]
        assert again.allocate_prekey_ids(1) == range(11, 12)
        assert again.check_identity("airline", KEY_A) is IdentityStatus.TRUSTED
        assert again.load_session("airline") == b"session"
        assert again.is_processed("airline", b"m" * 16)
        assert again.pending_messages() == [message(b"m" * 16)]
        assert again.get_state("k") == b"v"


def test_the_key_index_persists_and_is_built_for_a_store_made_before_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_sqlite(path) as first:
        first.trust_identity("airline", KEY_A, NOW)
        first.trust_identity("bob", KEY_B, NOW)
    with SqliteKeyStore.open(path, PASSPHRASE) as again:
        assert (again.identity_owner(KEY_A), again.identity_owner(KEY_B)) == ("airline", "bob")
        # What a store of an earlier version could hold: one key pinned under two handles.
        again._store_trust(TrustedIdentity("twin", KEY_A, NOW + 1, verified=False))
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE key_owners")

    for _ in range(2):  # the upgrade runs once and is idempotent
        with SqliteKeyStore.open(path, PASSPHRASE) as upgraded:
            assert (upgraded.identity_owner(KEY_A), upgraded.identity_owner(KEY_B)) == (
                "airline",
                "bob",
            )
            with pytest.raises(IdentityKeyReused):  # the first pinned keeps the key
                upgraded.trust_identity("twin", KEY_A, NOW + 2)


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
        "state": b"CANARY-state-value",
    }
    handles = ["zz-canary-contact", "yy-canary-business"]
    store = open_sqlite(path)
    store.set_identity(our_identity(seed=canaries["seed"]))
    store.store_signed_prekey(signed_prekey(1, private=canaries["spk"]))
    store.store_one_time_prekeys([one_time_prekey(2, private=canaries["otpk"])])
    store.store_session(handles[0], canaries["session"])
    store.trust_identity(handles[0], KEY_A, NOW)
    store.commit_incoming(message(b"i" * 16, sender=handles[1], body=canaries["body"]), b"s")
    store.set_state(f"consent:{handles[1]}", canaries["state"])
    canaries["log"] = b"CANARY-log-record"
    store.append_log(f"statements/{handles[1]}", canaries["log"])

    def assert_clean() -> None:
        raw = disk_bytes(path)
        for name, canary in canaries.items():
            assert canary not in raw, f"{name} found on disk in clear"
        for handle in handles:
            assert handle.encode() not in raw, f"handle {handle} found on disk"
        assert b"alice" not in raw  # even our own handle is sealed
        assert KEY_A not in raw  # a contact's key, even in the key index

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


def test_failed_commit_incoming_rolls_back_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.db"
    store = open_sqlite(path)
    store.store_session("airline", b"session-before")
    real_seal = store._seal

    def seal_failing_on_inbox(table: str, k: bytes, fields: list[Any]) -> bytes:
        if table == "inbox":
            raise OSError("disk full")
        return real_seal(table, k, fields)

    monkeypatch.setattr(store, "_seal", seal_failing_on_inbox)
    with pytest.raises(OSError, match="disk full"):
        store.commit_incoming(message(b"m" * 16), b"session-after")
    # The session write and the processed id happened before the failure: both undone.
    assert store.load_session("airline") == b"session-before"
    assert not store.is_processed("airline", b"m" * 16)
    assert store.pending_messages() == []
    assert not store._db.conn.in_transaction
    monkeypatch.undo()
    store.close()
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
    """Checked with PyNaCl's own calls, so files written before and after agree."""
    import msgpack
    import nacl.bindings
    import nacl.encoding
    import nacl.hash

    path = tmp_path / "keys.db"
    store = open_sqlite(path)
    store.set_state("sdk/outbox/1", b"envelope")
    k = nacl.hash.blake2b(
        b"state\x00sdk/outbox/1", digest_size=32, key=store._lookup_key,
        encoder=nacl.encoding.RawEncoder,
    )  # fmt: skip
    ad = b"blindrelay.keystore.v1\x00state\x00" + k
    ((sealed,),) = sqlite3.connect(path).execute("SELECT v FROM state WHERE k = ?", [k])
    plaintext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        sealed[24:], ad, sealed[:24], store._record_key
    )
    assert msgpack.unpackb(plaintext) == ["sdk/outbox/1", b"envelope"]

    nonce = b"\x07" * 24  # a row sealed by PyNaCl reads back
    resealed = nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        msgpack.packb(["sdk/outbox/1", b"other"]), ad, nonce, store._record_key
    )
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET v = ? WHERE k = ?", [resealed, k])
    reopened = open_sqlite(path)
    assert reopened.get_state("sdk/outbox/1") == b"other"
    reopened.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET v = ? WHERE k = ?", [resealed[:20], k])
    reopened = open_sqlite(path)
    with pytest.raises(KeyStoreCorrupted):
        reopened.get_state("sdk/outbox/1")
    reopened.close()


def test_rows_read_back_from_memory_are_what_the_file_holds(tmp_path: Path) -> None:
    """The decrypted-row cache is written through and forgets whatever a rollback undid."""
    path = tmp_path / "keys.db"
    store = open_sqlite(path)
    store.store_session("bob", b"s1")
    store.set_state("k", b"v1")
    assert store.load_session("bob") == b"s1" and store.get_state("absent") is None
    with pytest.raises(RuntimeError), store.atomic():
        store.store_session("bob", b"s2")
        store.set_state("absent", b"now here")
        store.delete_state("k")
        with store.atomic():
            store.set_state("k", b"v2")
        assert store.load_session("bob") == b"s2" and store.get_state("k") == b"v2"
        raise RuntimeError("roll back")
    expected = {"bob": b"s1", "k": b"v1", "absent": None}
    assert (store.load_session("bob"), store.get_state("k"), store.get_state("absent")) == (
        expected["bob"], expected["k"], expected["absent"],
    )  # fmt: skip
    with store.atomic():  # an inner block undone, the outer one kept
        store.set_state("k", b"v3")
        with pytest.raises(RuntimeError), store.atomic():
            store.store_session("bob", b"s3")
            raise RuntimeError("roll back the savepoint")
    assert (store.load_session("bob"), store.get_state("k")) == (b"s1", b"v3")
    store.delete_session("bob")
    assert store.load_session("bob") is None
    store.close()
    reopened = open_sqlite(path)  # and the file agrees
    assert (reopened.load_session("bob"), reopened.get_state("k")) == (None, b"v3")
    assert reopened.get_state("absent") is None
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
