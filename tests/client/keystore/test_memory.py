"""The key store in process memory (client/keystore/memory.py): a failed block undone from
its journal, the ordered tables restored exactly.

Rollbacks of every kind run on both stores (test_base.py); these are the memory store's
own mechanisms: the undo journal, the copies of its two ordered tables (processed ids,
the inbox), and the order of a log whose deletion was undone.
"""

from __future__ import annotations

import pytest

from blindrelay.client.keystore import MemoryKeyStore

from .samples import message


def ids(*numbers: int) -> list[bytes]:
    return [bytes([n]) * 16 for n in numbers]


def test_a_failed_block_puts_a_consumed_message_back_in_its_place() -> None:
    store = MemoryKeyStore()
    for msg_id in ids(1, 2, 3):
        store.commit_incoming(message(msg_id), b"session")
    with pytest.raises(RuntimeError), store.atomic():
        assert store.consume("airline", ids(2)[0])
        store.commit_incoming(message(ids(4)[0]), b"session")
        raise RuntimeError
    assert [m.msg_id for m in store.pending_messages()] == ids(1, 2, 3)


def test_a_failed_block_brings_back_the_processed_ids_it_pruned() -> None:
    store = MemoryKeyStore(max_processed_ids=2)
    for msg_id in ids(1, 2):
        store.mark_processed("airline", msg_id)
    with pytest.raises(RuntimeError), store.atomic():
        store.mark_processed("airline", ids(3)[0])  # prunes the oldest
        assert not store.is_processed("airline", ids(1)[0])
        raise RuntimeError
    assert [store.is_processed("airline", i) for i in ids(1, 2, 3)] == [True, True, False]


def test_a_log_whose_deletion_was_undone_keeps_its_order() -> None:
    store = MemoryKeyStore()
    for deliver in (b"d1", b"d2", b"d3"):
        store.hold_message("mallory", deliver)
    with pytest.raises(RuntimeError), store.atomic():
        store.release_held_messages("mallory", 2)
        raise RuntimeError
    assert store.held_messages("mallory") == [b"d1", b"d2", b"d3"]
    store.hold_message("mallory", b"d4")  # sequence numbers went on: still last
    assert store.held_messages("mallory") == [b"d1", b"d2", b"d3", b"d4"]


def test_an_inner_block_undoes_its_own_writes_and_the_outer_keeps_the_rest() -> None:
    store = MemoryKeyStore()
    with store.atomic():
        store.store_session("bob", b"outer")
        with pytest.raises(RuntimeError), store.atomic():
            store.store_session("bob", b"inner")
            store.store_session("carol", b"inner")
            raise RuntimeError
        assert store.load_session("bob") == b"outer"
    with pytest.raises(RuntimeError), store.atomic():  # a later block: the outer is kept
        store.delete_session("bob")
        raise RuntimeError
    assert store.load_session("bob") == b"outer" and store.load_session("carol") is None
