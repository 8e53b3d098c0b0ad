"""What the relay leaves on disk (SPEC §11.2): file modes, acknowledged envelopes.

The attack: whoever can read the relay's files — another local account, a
backup, a stolen disk image — replays the SQLite WAL and recovers sender,
recipient, time, size and ciphertext of every acknowledged envelope; and the
files were created 0644 although the database holds the relay's private seed.

These tests send envelopes with recognisable bodies, acknowledge them, run the
relay's checkpoint, and search the raw bytes of the database, its WAL and its
shared-memory file, with a positive control (an envelope still queued) showing
that the search finds what is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from blindrelay.protocol.frames import Ack, Sent
from blindrelay.server.config import RelayConfig
from blindrelay.server.store import Account
from blindrelay.server.store.sqlite import database
from blindrelay.server.store.sqlite.commit import GroupCommitter
from blindrelay.server.store.sqlite.tables import Tables

from .conftest import TEST_TIMEOUT_S, Clients, FakeClock, relay_with

SUFFIXES = ("", "-wal", "-shm")
CHUNK = 32
"""Bodies are searched for in pieces: any surviving piece counts as a leak."""


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The most permissive umask an operator might run with; restored afterwards."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def files(db: Path) -> dict[str, bytes]:
    return {f"{db.name}{suffix}": Path(f"{db}{suffix}").read_bytes() for suffix in SUFFIXES}


def modes(db: Path) -> dict[str, int]:
    return {
        f"{db.name}{suffix}": stat.S_IMODE(Path(f"{db}{suffix}").stat().st_mode)
        for suffix in SUFFIXES
    }


def body(label: str, size: int) -> bytes:
    """Random-looking bytes, like ciphertext, that no other envelope shares."""
    return hashlib.shake_256(label.encode()).digest(size)


def row_fingerprint(recipient: str, sender: str, msg_id: bytes) -> bytes:
    """The queue row's metadata as SQLite stores it: the record's values follow one
    another (recipient, sender, sender_kind, msg_id, intent …), so this sequence is
    that row and no other (``sent`` keeps sender and msg_id, never the recipient)."""
    return recipient.encode() + sender.encode() + b"user" + msg_id + b"chat"


def found(sources: dict[str, bytes], needle: bytes) -> list[str]:
    """Where any CHUNK-byte piece of ``needle`` (or all of a short one) occurs."""
    pieces = [needle[i : i + CHUNK] for i in range(0, max(len(needle) - CHUNK, 0) + 1, CHUNK)]
    return [name for name, data in sources.items() if any(p in data for p in pieces)]


async def test_acknowledged_envelopes_leave_no_trace_after_a_checkpoint(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §11.2: after the ACK and the next checkpoint, neither the database, nor its
    WAL, nor its shared memory holds an acknowledged envelope's body or its row; and
    every file is 0600 whatever the umask."""
    db = config.db_path
    with umask(0):
        async with relay_with(config, clock) as relay:
            sender = await clients.registered(relay.url, "sndr-5b1f0c")
            recipient = await clients.registered(relay.url, "rcpt-93ad2e")
            sizes = [48, 700, 3000, 9000, 33000, 100, 5000]  # inline rows and overflow pages
            bodies = [body(f"acked-{n}", size) for n, size in enumerate(sizes)]
            msg_ids = [os.urandom(16) for _ in bodies]
            for n, (msg_id, data) in enumerate(zip(msg_ids, bodies, strict=True)):
                assert isinstance(await sender.send_message(recipient.handle, data, msg_id), Sent)
                if n == 4:
                    # Envelopes queued across a checkpoint are in the main file when
                    # they are acknowledged; the last two are only in the WAL.
                    await relay.housekeeping.checkpoint()
            delivered = await recipient.deliveries(len(bodies))
            assert [d.body for d in delivered] == bodies
            await recipient.send(Ack(delivery_ids=tuple(d.delivery_id for d in delivered)))
            await recipient.close()
            # The positive control: queued, never acknowledged.
            kept, kept_id = body("kept", 5000), os.urandom(16)
            assert isinstance(await sender.send_message(recipient.handle, kept, kept_id), Sent)
            await relay.ctx.store.submit("noop")  # the ACK is committed
            await relay.housekeeping.checkpoint()

            assert modes(db) == dict.fromkeys(modes(db), 0o600)
            on_disk = files(db)
            leaks = {
                label: where
                for label, needle in [
                    *((f"body {n}", data) for n, data in enumerate(bodies)),
                    *(
                        (f"row {n}", row_fingerprint(recipient.handle, sender.handle, msg_id))
                        for n, msg_id in enumerate(msg_ids)
                    ),
                ]
                if (where := found(on_disk, needle))
            }
            assert leaks == {}
            assert on_disk[f"{db.name}-wal"] == b""  # truncated, not just checkpointed
            assert found(on_disk, kept) == [db.name]
            assert found(on_disk, row_fingerprint(recipient.handle, sender.handle, kept_id))
            # What SPEC §6.3 keeps on purpose: the sender's msg_id, for idempotence.
            assert all(found(on_disk, msg_id) == [db.name] for msg_id in msg_ids)


async def test_the_relay_checkpoints_on_its_own(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §11.2: the relay truncates its WAL every ``checkpoint_interval_s``."""
    async with relay_with(config, clock, checkpoint_interval_s=0.05) as relay:
        await clients.registered(relay.url, "alice")
        wal = Path(f"{config.db_path}-wal")
        async with asyncio.timeout(TEST_TIMEOUT_S):
            while wal.stat().st_size:
                await asyncio.sleep(0.01)


async def test_files_of_an_older_relay_are_made_private(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §11.2: a database an older relay left 0644, with its WAL and shared memory
    (as a crash leaves them), is 0600 once this relay has opened it."""
    db = config.db_path
    older = database.connect(db).conn  # a relay's database, open: its WAL and -shm exist
    for name in modes(db):
        (db.parent / name).chmod(0o644)  # as SQLite made them before the relay chose
    assert modes(db) == dict.fromkeys(modes(db), 0o644)
    try:
        async with relay_with(config, clock) as relay:
            await clients.registered(relay.url, "alice")
            assert modes(db) == dict.fromkeys(modes(db), 0o600)
    finally:
        older.close()


async def test_a_purged_envelope_leaves_no_trace_either(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §11.2: every deletion is overwritten, not only an ACK's — here the TTL purge."""
    db = config.db_path
    async with relay_with(replace(config, queue_ttl_ms=1000), clock) as relay:
        sender = await clients.registered(relay.url, "sndr-77c2aa")
        recipient = await clients.registered(relay.url, "rcpt-0d9e41")
        await recipient.close()
        expired, msg_id = body("expired", 4000), os.urandom(16)
        assert isinstance(await sender.send_message(recipient.handle, expired, msg_id), Sent)
        clock.advance(2000)
        assert await relay.housekeeping.purge_expired() == (1, 1)
        await relay.housekeeping.checkpoint()
        on_disk = files(db)
        assert found(on_disk, expired) == []
        assert found(on_disk, row_fingerprint(recipient.handle, sender.handle, msg_id)) == []
        assert found(on_disk, msg_id) == []  # the purge forgets the msg_id too (SPEC §6.3)


def test_deleted_rows_are_overwritten_even_where_sqlite_keeps_them_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §11.2: "secure_delete" is the relay's setting, not the SQLite build's.

    Some builds (Debian's) zero deleted content by default, most do not; this
    connection starts as the latter, so the test means the same everywhere. An
    envelope checkpointed into the main file while queued is acknowledged, and
    after the next checkpoint no piece of it is left in the file."""
    connect_sqlite = sqlite3.connect

    def keeping_deleted_bytes(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect_sqlite(*args, **kwargs)  # type: ignore[arg-type]
        conn.execute("PRAGMA secure_delete=OFF")
        return conn

    monkeypatch.setattr(database.sqlite3, "connect", keeping_deleted_bytes)
    db = tmp_path / "relay.db"
    store = Tables(database.connect(db))
    writer = GroupCommitter(store)
    sender = Account("sndr-1c9a0f", "user", b"s" * 32)
    bodies = [body(f"queued-{n}", size) for n, size in enumerate([200, 3000, 20000])]

    def enqueue(n: int, data: bytes) -> int:
        accepted = store.queue.enqueue(
            "rcpt-4e2b7d", sender, bytes([n]) * 16, "chat", None, None, data,
            bytes([n]) * 32, 0, cap=100,
        )  # fmt: skip
        assert accepted.envelope is not None
        return accepted.envelope.delivery_id

    outcomes = writer.commit([lambda _, n=n, d=d: enqueue(n, d) for n, d in enumerate(bodies)])
    ids = [value for _ok, value in outcomes]
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert all(found({"db": db.read_bytes()}, data) for data in bodies)
    writer.commit([lambda _: store.queue.acknowledge("rcpt-4e2b7d", ids)])
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    on_disk = files(db)
    store.db.conn.close()
    assert {n: where for n, data in enumerate(bodies) if (where := found(on_disk, data))} == {}
