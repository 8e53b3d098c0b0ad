"""The writer thread and the tables (server/storage.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from blindrelay.protocol.errors import QueueFull
from blindrelay.server.storage import Account, Store, Writer


async def test_jobs_of_one_loop_turn_share_one_commit(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "r.db", "FULL")
    await writer.start()
    alice = Account("alice", "user", b"k" * 32)
    await writer.submit(lambda store: store.accounts.create(alice, 0))
    commits_before = writer.commits

    def enqueue(n: int) -> Callable[[Store], int]:
        def job(store: Store) -> int:
            accepted = store.queue.enqueue(
                "bob", alice, n.to_bytes(16, "big"), "chat", None, None, b"x", b"d%d" % n, 0,
                cap=50,
            )  # fmt: skip
            assert accepted.envelope is not None
            return accepted.envelope.delivery_id

        return job

    futures = [writer.submit(enqueue(n)) for n in range(60)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    await writer.close()
    assert writer.commits == commits_before + 1
    ids = results[:50]
    assert ids == sorted(ids) and len(set(ids)) == 50  # type: ignore[type-var]
    assert all(isinstance(r, QueueFull) for r in results[50:])  # refused alone, others kept


async def test_a_writer_that_cannot_open_its_database_fails_to_start(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "missing-dir" / "r.db", "FULL")
    with pytest.raises(Exception, match="unable to open"):
        await writer.start()


async def test_delivery_ids_are_never_reused_after_the_queue_empties(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "r.db", "NORMAL")
    await writer.start()
    alice = Account("alice", "user", b"k" * 32)

    def one(store: Store, n: int) -> int:
        accepted = store.queue.enqueue(
            "bob", alice, bytes([n]) * 16, "chat", None, None, b"x", b"d", 0, cap=10
        )
        assert accepted.envelope is not None
        return accepted.envelope.delivery_id

    first = await writer.submit(lambda store: one(store, 1))
    await writer.submit(lambda store: store.queue.acknowledge("bob", [first]))
    second = await writer.submit(lambda store: one(store, 2))
    await writer.close()
    assert second > first
