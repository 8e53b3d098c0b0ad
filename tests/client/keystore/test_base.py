"""The storage primitives under every record kind (client/keystore/base.py): both stores
satisfy the one ``KeyStore`` protocol, and a block of writes is all or nothing.

Each test runs against both stores (the ``store`` fixture of tests/client/conftest.py).
"""

from __future__ import annotations

import pytest

from blindrelay.client.keystore import (
    HeldCounts,
    KeyStore,
)

from .samples import (
    KEY_A,
    KEY_B,
    message,
    outgoing,
)


def test_both_implementations_satisfy_the_protocol(store: KeyStore) -> None:
    assert isinstance(store, KeyStore)


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
