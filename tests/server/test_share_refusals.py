"""What a SEND refused by its share of a long queue costs the SQLite writer (SPEC §6.3;
the shares are kept in the writer's cache, ``queue.MessageQueue.shares``).

A queue long enough for the shares to matter (from ``QUEUE_SHARE_PER_SENDER`` envelopes
on) has its envelopes counted per sender once, by a scan of its rows, then kept. A SEND
that job made the scan for and was then refused (401 QUEUE_FULL: its sender's share is
full) failed, and a failed job that had touched the shares emptied them all — so the
next refused SEND scanned again, and every one after it: the sender's own queue share
full, each SEND it made (50 a second, 200 at once) read the recipient's whole queue in
the writer that commits every SEND, and emptied every other queue's shares too. Counted
in SQLite's VM steps, not time (threat model T13a: 2.4 ms of the writer a refused SEND
at 9,000 queued, 0.03 ms now; found in the 2026-12-07 review)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from blindrelay.protocol.errors import QueueFull
from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.store import Account
from blindrelay.server.store.sqlite import jobs
from blindrelay.server.store.sqlite.commit import GroupCommitter
from blindrelay.server.store.sqlite.database import connect
from blindrelay.server.store.sqlite.tables import Tables

NOW = 1_800_000_000_000
RULES = list(send_rules(RelayConfig()))


def _sends(writer: GroupCommitter, sender: str, to: str, count: int = 1) -> list[Any]:
    def one(tables: Tables) -> Any:
        return jobs.send(tables, sender, "user", to, os.urandom(16), "chat", None, None,
                         b"x" * 100, NOW, RULES)  # fmt: skip

    return writer.commit([one] * count)


def test_a_send_refused_by_its_share_does_not_make_the_next_one_read_the_queue(
    tmp_path: Path,
) -> None:
    tables = Tables(connect(tmp_path / "r.db"))
    writer = GroupCommitter(tables)

    def accounts(store: Tables) -> None:
        for handle in ("victim", "mallory", "other"):
            store.accounts.create(Account(handle, "user", handle.encode().ljust(32, b".")), 0)

    writer.commit([accounts])
    for contact in ("mallory", "other"):
        assert _sends(writer, "victim", contact)[0][0]
    assert all(ok for ok, _ in _sends(writer, "mallory", "victim", 1000))  # her share
    assert all(ok for ok, _ in _sends(writer, "other", "victim", 500))
    tables.cache.shares.clear()  # as after a restart, or a purge that deleted anything
    steps: list[int] = []
    ran = [0]

    def step() -> int:
        ran[0] += 1
        return 0

    tables.db.conn.set_progress_handler(step, 1)
    for _ in range(3):
        ran[0] = 0
        [(ok, refusal)] = _sends(writer, "mallory", "victim")
        assert not ok and isinstance(refusal, QueueFull)
        steps.append(ran[0])
    tables.db.conn.set_progress_handler(None, 1)
    assert "victim" in tables.cache.shares
    assert steps[1] * 20 < steps[0] and steps[2] == steps[1], steps
    [(ok, _)] = _sends(writer, "other", "victim")  # the shares kept are still right
    assert ok
    kept = tables.cache.shares.pop("victim")
    assert kept == tables.queue.shares("victim", 1000)  # a fresh scan

    # A job that failed after it wrote still leaves no share it changed in place.
    def fails_after_writing(store: Tables) -> None:
        store.queue.shares("victim", 1000)
        mallory = Account("mallory", "user", b"m" * 32)
        store.queue.add("victim", mallory, os.urandom(16), "chat", None, None, b"x", b"d",
                        NOW, 100_000)  # fmt: skip
        raise RuntimeError("after writing")

    [(ok, _)] = writer.commit([fails_after_writing])
    assert not ok
    kept = tables.cache.shares.pop("victim", None)
    assert kept is None or kept == tables.queue.shares("victim", 1000), kept
