"""Key custody (client/keystore/): one suite for both stores, every kind of record.

Each test runs against MemoryKeyStore and SqliteKeyStore; what only the file can
show (sealing, upgrades) is in test_keystore_sqlite.py and test_keystore_upgrade.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from blindrelay.client.keystore import (
    HeldCounts,
    IdentityStatus,
    IncomingMessage,
    KeyStore,
    MemoryKeyStore,
    OneTimePreKeyRecord,
    OurIdentity,
    OutboxEntry,
    SignedPreKeyRecord,
)
from blindrelay.client.keystore.schema import replay_v1_log, replay_v1_state
from blindrelay.protocol.errors import IdentityKeyReused, UntrustedIdentity

from .keystore_files import open_sqlite

KEY_A = b"\xa1" * 32
KEY_B = b"\xb2" * 32
NOW = 1_700_000_000_000


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


def outgoing(n: int, to: str = "bob", **fields: Any) -> OutboxEntry:
    return OutboxEntry(NOW * 1000 + n, bytes([n]) * 16, to, b"envelope-%d" % n, "chat", **fields)


# --- Records ---------------------------------------------------------------------------


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
        OurIdentity("alice", "admin", "wss://r", b"\x01" * 32, b"\x02" * 32)


def test_an_outbox_entry_is_refused_before_anything_is_written() -> None:
    with pytest.raises(TypeError, match="envelope"):
        OutboxEntry(1, b"m" * 16, "bob", b"", "chat")
    with pytest.raises(TypeError, match="categories"):
        OutboxEntry(1, b"m" * 16, "bob", b"e", "chat", categories=["utility"])
    with pytest.raises(ValueError, match="position"):
        OutboxEntry(-1, b"m" * 16, "bob", b"e", "chat")
    assert "envelope-1" not in repr(outgoing(1))


# --- Keys --------------------------------------------------------------------------------

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



def test_trusted_identities_list_every_contact_by_handle(store: KeyStore) -> None:
    store.trust_identity("bob", KEY_B, NOW)
    store.approve_identity("airline", KEY_A, NOW + 1, verified=True)
    assert [(t.handle, t.identity_key, t.verified) for t in store.trusted_identities()] == [
        ("airline", KEY_A, True),
        ("bob", KEY_B, False),
    ]


def test_a_pending_identity_change_is_kept_until_cleared(store: KeyStore) -> None:
    """SPEC §3.3: the key a contact presented waits for the user, per contact."""
    assert store.pending_identity_change("airline") is None
    store.record_identity_change("airline", KEY_B)
    store.record_identity_change("bob", KEY_A)
    assert store.pending_identity_change("airline") == KEY_B
    assert store.pending_identity_changes() == {"airline": KEY_B, "bob": KEY_A}
    store.clear_identity_change("airline")
    assert store.pending_identity_change("airline") is None
    assert store.pending_identity_changes() == {"bob": KEY_A}
    with pytest.raises(ValueError):
        store.record_identity_change("bob", b"short")


# --- Incoming messages -------------------------------------------------------------------


def test_processed_ids_are_per_sender(store: KeyStore) -> None:
    """SPEC §6.4.3: deduplicate by (sender, msg_id) — another sender may pick the same id."""
    assert store.commit_incoming(message(b"m" * 16, sender="airline"), b"s1") is True
    assert store.commit_incoming(message(b"m" * 16, sender="shop"), b"s2") is True
    assert store.is_processed("airline", b"m" * 16) and store.is_processed("shop", b"m" * 16)
    assert not store.is_processed("bank", b"m" * 16)
    assert [m.sender for m in store.pending_messages()] == ["airline", "shop"]
    assert store.consume("shop", b"m" * 16) is True
    assert [m.sender for m in store.pending_messages()] == ["airline"]


def test_commit_incoming_takes_the_one_time_prekey_it_used(store: KeyStore) -> None:
    store.store_one_time_prekeys([one_time_prekey(1), one_time_prekey(2)])
    store.commit_incoming(message(b"p" * 16), b"s", used_one_time_prekey=2)
    assert store.one_time_prekey_ids() == [1]


# --- Outbox ------------------------------------------------------------------------------


def test_the_outbox_keeps_envelopes_in_the_order_queued_until_retired(store: KeyStore) -> None:
    """SPEC §6.3: resent after a restart with the same msg_id, in the order made."""
    store.queue_outgoing(outgoing(3))
    store.queue_outgoing(outgoing(1, to="airline", categories=("utility", "marketing")))
    store.queue_outgoing(outgoing(2, category="utility"))
    assert store.outbox() == [
        outgoing(1, to="airline", categories=("utility", "marketing")),
        outgoing(2, category="utility"),
        outgoing(3),
    ]
    assert store.outgoing(bytes([2]) * 16) == outgoing(2, category="utility")
    assert store.retire_outgoing(bytes([2]) * 16) is True
    assert store.retire_outgoing(bytes([2]) * 16) is False
    assert store.outgoing(bytes([2]) * 16) is None
    assert [entry.msg_id[0] for entry in store.outbox()] == [1, 3]


# --- Held messages -----------------------------------------------------------------------


def test_held_messages_wait_in_order_with_their_counts(store: KeyStore) -> None:
    """SPEC §13.8: kept and acknowledged while the user decides; dropped ones counted."""
    assert store.held_counts_of("mallory") is None
    assert store.hold_message("mallory", b"d1") == HeldCounts(1, 0)
    assert store.hold_message("mallory", b"d2") == HeldCounts(2, 0)
    assert store.count_dropped("mallory") == HeldCounts(2, 1)
    store.hold_message("eve", b"e1")
    assert store.held_messages("mallory") == [b"d1", b"d2"]
    assert store.held_counts() == {"mallory": HeldCounts(2, 1), "eve": HeldCounts(1, 0)}

    store.release_held_messages("mallory", 1)  # released one; the next names another key
    assert store.held_messages("mallory") == [b"d2"]
    assert store.held_counts_of("mallory") == HeldCounts(1, 1)
    store.hold_message("mallory", b"d3")
    assert store.held_messages("mallory") == [b"d2", b"d3"]

    store.release_held_messages("mallory")
    assert store.held_messages("mallory") == [] and store.held_counts_of("mallory") is None
    store.release_held_messages("nobody")
    assert store.held_counts() == {"eve": HeldCounts(1, 0)}
    assert store.held_messages("eve") == [b"e1"]


# --- Owed receipts and whom we wrote to ---------------------------------------------------


def test_owed_receipts_are_kept_per_requester(store: KeyStore) -> None:
    assert store.owed_receipts("dave") == []
    store.set_owed_receipts("dave", [b"r1" * 8, b"r2" * 8])
    store.set_owed_receipts("erin", [b"r3" * 8])
    assert store.owed_receipts("dave") == [b"r1" * 8, b"r2" * 8]
    assert store.all_owed_receipts() == {"dave": [b"r1" * 8, b"r2" * 8], "erin": [b"r3" * 8]}
    store.set_owed_receipts("dave", [])
    assert store.all_owed_receipts() == {"erin": [b"r3" * 8]}


def test_accounts_we_wrote_to_are_a_set(store: KeyStore) -> None:
    assert store.wrote_to() == set()
    store.note_wrote_to("bob")
    store.note_wrote_to("bob")
    store.note_wrote_to("carol")
    assert store.wrote_to() == {"bob", "carol"}
    store.forget_wrote_to("bob")
    assert store.wrote_to() == {"carol"}


# --- Kept statements -------------------------------------------------------------------


def test_statements_are_kept_in_order_per_counterpart_with_their_count(store: KeyStore) -> None:
    """SPEC §7.5: a count tells whether there are new ones, and reading from it reads only
    those."""
    assert store.statement_count("alice") == 0
    for i in range(4):
        assert store.keep_statement("alice", b"a%d" % i) == i + 1
    store.keep_statement("bob", b"b0")
    assert store.kept_statements("alice") == [b"a0", b"a1", b"a2", b"a3"]
    assert store.kept_statements("alice", start=3) == [b"a3"]
    assert store.kept_statements("alice", start=9) == []
    assert store.kept_statements("carol") == []
    assert store.statement_counts() == {"alice": 4, "bob": 1}


# --- Settings and the front ends' records ---------------------------------------------


def test_settings_hold_one_value_each_until_cleared(store: KeyStore) -> None:
    assert (store.relay_key(), store.is_registered(), store.rotating_identity_seed()) == (
        None, False, None,
    )  # fmt: skip
    assert store.business_profile() is None
    store.set_relay_key(KEY_A)
    store.set_registered()
    store.set_rotating_identity_seed(KEY_B)
    store.set_business_profile(b"signed profile")
    assert (store.relay_key(), store.is_registered(), store.rotating_identity_seed()) == (
        KEY_A, True, KEY_B,
    )  # fmt: skip
    assert store.business_profile() == b"signed profile"
    store.set_rotating_identity_seed(None)
    store.set_registered(False)
    store.set_business_profile(None)
    assert (store.rotating_identity_seed(), store.is_registered()) == (None, False)
    assert (store.business_profile(), store.relay_key()) == (None, KEY_A)
    with pytest.raises(ValueError):
        store.set_relay_key(b"short")


def test_away_replies_are_remembered_per_customer(store: KeyStore) -> None:
    assert store.away_reply_period("alice") is None
    store.set_away_reply_period("alice", 7)
    store.set_away_reply_period("bob", 8)
    store.set_away_reply_period("alice", 9)
    assert store.away_reply_periods() == {"alice": 9, "bob": 8}
    store.set_away_reply_period("bob", None)
    assert store.away_reply_periods() == {"alice": 9}


def test_chat_contacts_and_consent_requests_are_rows_per_account(store: KeyStore) -> None:
    store.set_chat_contact("alice", "")
    store.set_chat_contact("alice", "user")
    store.set_chat_contact("airline", "business")
    store.set_consent_request("airline", ("utility",))
    store.set_consent_request("travel", ("utility", "marketing"))
    assert store.chat_contacts() == {"alice": "user", "airline": "business"}
    assert store.consent_requests() == {
        "airline": ("utility",), "travel": ("utility", "marketing"),
    }  # fmt: skip
    store.set_chat_contact("alice", None)
    store.set_consent_request("airline", None)
    assert store.chat_contacts() == {"airline": "business"}
    assert store.consent_requests() == {"travel": ("utility", "marketing")}


# --- Grouping ------------------------------------------------------------------------------


def test_atomic_block_rolls_back_every_write_of_every_kind(store: KeyStore) -> None:
    store.store_session("airline", b"before")
    store.queue_outgoing(outgoing(1))
    store.commit_incoming(message(b"a" * 16), b"before")
    store.hold_message("mallory", b"d1")
    store.keep_statement("alice", b"s1")
    with pytest.raises(RuntimeError, match="crash"), store.atomic():
        store.store_session("airline", b"after")
        store.store_session("shop", b"new")
        store.queue_outgoing(outgoing(2))
        store.retire_outgoing(outgoing(1).msg_id)
        store.consume("airline", b"a" * 16)
        store.commit_incoming(message(b"b" * 16, sender="bank"), b"bank-session")
        store.hold_message("mallory", b"d2")
        store.release_held_messages("mallory", 1)
        store.keep_statement("alice", b"s2")
        store.note_wrote_to("bob")
        store.record_identity_change("airline", KEY_B)
        store.set_relay_key(KEY_A)
        store.set_away_reply_period("alice", 3)
        raise RuntimeError("crash")
    assert store.load_session("airline") == b"before"
    assert store.load_session("shop") is None and store.load_session("bank") is None
    assert store.outbox() == [outgoing(1)]
    assert store.pending_messages() == [message(b"a" * 16)]
    assert not store.is_processed("bank", b"b" * 16)
    assert store.held_messages("mallory") == [b"d1"]
    assert store.held_counts() == {"mallory": HeldCounts(1, 0)}
    assert store.kept_statements("alice") == [b"s1"] and store.statement_counts() == {"alice": 1}
    assert store.wrote_to() == set() and store.pending_identity_changes() == {}
    assert store.relay_key() is None and store.away_reply_periods() == {}


def test_atomic_blocks_nest_like_savepoints(store: KeyStore) -> None:
    with store.atomic():
        store.note_wrote_to("outer")
        with pytest.raises(RuntimeError), store.atomic():
            store.note_wrote_to("inner")
            store.forget_wrote_to("outer")
            store.keep_statement("alice", b"inner")
            raise RuntimeError
        store.note_wrote_to("after")
    assert store.wrote_to() == {"after", "outer"}
    assert store.kept_statements("alice") == [] and store.statement_counts() == {}


# --- Version 1's keys, replayed by the upgrade (client/keystore/schema.py) -----------------

u64 = lambda n: n.to_bytes(8, "big")  # noqa: E731


def packed(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def old_outbox_key(entry: OutboxEntry) -> str:
    return f"sdk/outbox/{entry.position:020d}.{entry.msg_id.hex()}"


OLD_KEYS: list[tuple[str, bytes, Callable[[KeyStore], object], object]] = [
    (old_outbox_key(outgoing(1, category="utility")),
     packed(["bob", b"envelope-1", "chat", "utility", None]),
     lambda s: s.outbox(), [outgoing(1, category="utility")]),
    (old_outbox_key(outgoing(2, categories=("utility",))),
     packed(["bob", b"envelope-2", "chat", None, ["utility"]]),
     lambda s: s.outgoing(bytes([2]) * 16), outgoing(2, categories=("utility",))),
    ("sdk/owed-receipts/dave", packed([b"r" * 16]), lambda s: s.owed_receipts("dave"),
     [b"r" * 16]),
    ("sdk/wrote-to/bob", b"", lambda s: s.wrote_to(), {"bob"}),
    ("sdk/relay-key", KEY_A, lambda s: s.relay_key(), KEY_A),
    ("sdk/registered", b"1", lambda s: s.is_registered(), True),
    ("sdk/rotating-identity-seed", KEY_B, lambda s: s.rotating_identity_seed(), KEY_B),
    ("identity-change/airline", KEY_B, lambda s: s.pending_identity_change("airline"), KEY_B),
    ("business/profile", b"signed", lambda s: s.business_profile(), b"signed"),
    ("business/away/alice", u64(12), lambda s: s.away_reply_period("alice"), 12),
    ("chat/contacts", json.dumps({"alice": "user", "bob": ""}, sort_keys=True).encode(),
     lambda s: s.chat_contacts(), {"alice": "user", "bob": ""}),
    ("chat/requests", json.dumps({"airline": ["utility"]}, sort_keys=True).encode(),
     lambda s: s.consent_requests(), {"airline": ("utility",)}),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value", "typed", "expected"), OLD_KEYS, ids=[k[0] for k in OLD_KEYS])
def test_each_version_1_key_is_filed_in_its_kinds_table(
    store: KeyStore, key: str, value: bytes, typed: Callable[[KeyStore], object], expected: object
) -> None:
    assert typed(store) in (None, [], {}, set(), False)
    replay_v1_state(store, key, value)
    assert typed(store) == expected


def test_version_1_logs_are_counted_as_they_are_replayed(store: KeyStore) -> None:
    """The upgrade moves the logs first; the count rows written beside them then add
    only what no log row records: the messages dropped while a key change waited."""
    for signed in (b"s1", b"s2"):
        replay_v1_log(store, "statements/alice", signed)
    replay_v1_log(store, "held/mallory", b"d1")
    replay_v1_state(store, "sdk/statement-count/alice", u64(2))
    replay_v1_state(store, "sdk/held/mallory", u64(1) + u64(3))
    assert store.kept_statements("alice") == [b"s1", b"s2"]
    assert store.statement_counts() == {"alice": 2}
    assert store.held_messages("mallory") == [b"d1"]
    assert store.held_counts() == {"mallory": HeldCounts(1, 3)}


def test_a_statement_list_of_the_format_before_the_log_is_filed_after_the_log(
    store: KeyStore,
) -> None:
    replay_v1_log(store, "statements/alice", b"s0")
    replay_v1_state(store, "sdk/statements/alice", packed([b"s1", b"s2"]))
    assert store.kept_statements("alice") == [b"s0", b"s1", b"s2"]
    assert store.statement_counts() == {"alice": 3}


def test_a_version_1_record_of_no_known_kind_or_shape_is_refused(store: KeyStore) -> None:
    for key in ("consent:airline", "sdk/outbox/", "sdk/unknown/x"):
        with pytest.raises(ValueError, match="no record kind"):
            replay_v1_state(store, key, b"x")
    with pytest.raises(ValueError, match="no record kind"):
        replay_v1_log(store, "other/alice", b"x")
    for key, value in [
        ("sdk/held/mallory", u64(1)), ("business/away/alice", b"x"),
        ("chat/contacts", b"[]"), ("sdk/owed-receipts/dave", packed({"not": "a list"})),
    ]:  # fmt: skip
        with pytest.raises(ValueError):
            replay_v1_state(store, key, value)
    replay_v1_state(store, "sdk/outbox", packed([]))  # retired: dropped
    assert store.outbox() == [] and store.held_counts() == {} and store.away_reply_periods() == {}
