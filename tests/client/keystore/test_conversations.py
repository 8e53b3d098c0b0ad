"""What a client keeps of its conversations (client/keystore/conversations.py): processed
ids and the inbox, the outbox, held messages, owed receipts, wrote-to, kept statements.

Each test runs against both stores (the ``store`` fixture of tests/client/conftest.py).
"""

from __future__ import annotations

from blindrelay.client.keystore import (
    HeldCounts,
    KeyStore,
)
from blindrelay.protocol.transparency.bills import SentNotification

from .samples import (
    message,
    one_time_prekey,
    outgoing,
)


def test_processed_ids_are_remembered_and_the_oldest_pruned(store: KeyStore) -> None:
    ids = [bytes([i]) * 16 for i in range(8)]
    for msg_id in ids:
        store.mark_processed("airline", msg_id)
    store.mark_processed("airline", ids[-1])  # idempotent
    # The fixture caps memory at 5 ids.
    assert [store.is_processed("airline", msg_id) for msg_id in ids] == [False] * 3 + [True] * 5


def test_processed_ids_are_per_sender(store: KeyStore) -> None:
    """SPEC §6.4.3: deduplicate by (sender, msg_id) — another sender may pick the same id."""
    assert store.commit_incoming(message(b"m" * 16, sender="airline"), b"s1") is True
    assert store.commit_incoming(message(b"m" * 16, sender="shop"), b"s2") is True
    assert store.is_processed("airline", b"m" * 16) and store.is_processed("shop", b"m" * 16)
    assert not store.is_processed("bank", b"m" * 16)
    assert [m.sender for m in store.pending_messages()] == ["airline", "shop"]
    assert store.consume("shop", b"m" * 16) is True
    assert [m.sender for m in store.pending_messages()] == ["airline"]


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


def test_commit_incoming_takes_the_one_time_prekey_it_used(store: KeyStore) -> None:
    store.store_one_time_prekeys([one_time_prekey(1), one_time_prekey(2)])
    store.commit_incoming(message(b"p" * 16), b"s", used_one_time_prekey=2)
    assert store.one_time_prekey_ids() == [1]


def test_inbox_keeps_arrival_order_until_consumed(store: KeyStore) -> None:
    for i in (3, 1, 2):
        store.commit_incoming(message(bytes([i]) * 16, body=bytes([i])), bytes([i]))
    assert [m.body for m in store.pending_messages()] == [b"\x03", b"\x01", b"\x02"]
    assert store.consume("airline", b"\x01" * 16) is True
    assert store.consume("airline", b"\x01" * 16) is False
    assert [m.body for m in store.pending_messages()] == [b"\x03", b"\x02"]


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
    assert store.has_written_to("bob") and not store.has_written_to("dave")
    store.forget_wrote_to("bob")
    assert store.wrote_to() == {"carol"}
    assert not store.has_written_to("bob")


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


def test_sent_notifications_are_kept_per_utc_month_in_the_order_kept(store: KeyStore) -> None:
    november = SentNotification(b"\x01" * 16, "alice", "utility", 1_794_000_000_000)
    december = SentNotification(b"\x02" * 16, "bob", "marketing", 1_796_500_000_000)
    later = SentNotification(b"\x03" * 16, "carol", "utility", 1_794_000_000_001)
    for sent in (november, december, later):
        store.keep_sent_notification(sent)
    assert store.sent_notifications("2026-11") == [november, later]
    assert store.sent_notifications("2026-12") == [december]
    assert store.sent_notifications("2026-10") == []
