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


async def test_a_job_that_fails_after_writing_undoes_only_itself(tmp_path: Path) -> None:
    """The batch is replayed with savepoints: the failed job's rows and cache
    entries are gone, its neighbours' are committed."""
    writer = Writer(tmp_path / "r.db", "FULL")
    await writer.start()
    alice = Account("alice", "user", b"k" * 32)
    await writer.submit(lambda store: store.accounts.create(alice, 0))

    def enqueue(n: int) -> Callable[[Store], int]:
        def job(store: Store) -> int:
            accepted = store.queue.enqueue(
                "bob", alice, bytes([n]) * 16, "chat", None, None, b"x", b"d", 0, cap=10
            )
            assert accepted.envelope is not None
            return accepted.envelope.delivery_id

        return job

    def enqueue_then_fail(store: Store) -> None:
        enqueue(9)(store)
        store.accounts.create(Account("carol", "user", b"c" * 32), 0)
        raise QueueFull()

    commits_before = writer.commits
    futures = [writer.submit(enqueue(1)), writer.submit(enqueue_then_fail),
               writer.submit(enqueue(2))]  # fmt: skip
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert writer.commits == commits_before + 1
    assert isinstance(results[1], QueueFull)
    assert isinstance(results[0], int) and isinstance(results[2], int)

    def state(store: Store) -> tuple[int, int, int, bool]:
        rows = store.db.execute("SELECT COUNT(*) FROM queue WHERE recipient = 'bob'").fetchone()[0]
        sent = store.db.execute("SELECT COUNT(*) FROM sent").fetchone()[0]
        return store.queue.queued("bob"), rows, sent, store.accounts.get("carol") is None

    assert await writer.submit(state) == (2, 2, 2, True)
    await writer.close()


async def test_cached_queue_lengths_follow_acks_withdrawals_and_purges(tmp_path: Path) -> None:
    """The cap counts rows from memory; every delete path keeps that count exact."""
    writer = Writer(tmp_path / "r.db", "NORMAL")
    await writer.start()
    alice = Account("alice", "user", b"k" * 32)

    def fill(store: Store, first: int, n: int, at: int) -> list[int]:
        ids = []
        for i in range(first, first + n):
            accepted = store.queue.enqueue(
                "bob", alice, i.to_bytes(16, "big"), "chat", None, None, b"x", b"d", at, cap=5
            )
            assert accepted.envelope is not None
            ids.append(accepted.envelope.delivery_id)
        return ids

    def recount(store: Store) -> tuple[int, int]:
        rows = store.db.execute("SELECT COUNT(*) FROM queue WHERE recipient = 'bob'").fetchone()[0]
        return store.queue.queued("bob"), int(rows)

    ids = await writer.submit(lambda store: fill(store, 0, 5, at=10))
    with pytest.raises(QueueFull):
        await writer.submit(lambda store: fill(store, 5, 1, at=10))
    await writer.submit(lambda store: store.queue.acknowledge("bob", ids[:2]))
    assert await writer.submit(recount) == (3, 3)
    await writer.submit(lambda store: store.queue.withdraw("bob", "alice", None))
    assert await writer.submit(recount) == (0, 0)
    await writer.submit(lambda store: fill(store, 10, 3, at=10))
    await writer.submit(lambda store: fill(store, 20, 2, at=1000))
    await writer.submit(lambda store: store.queue.purge(before=500))
    assert await writer.submit(recount) == (2, 2)
    await writer.close()
