"""Group commit: the writer process runs batches of jobs as one transaction each.

Why a module of its own: the tables (``tables``) say what is stored and how a job reads
and writes it; this says how jobs share a transaction — no savepoint unless a failed job
wrote, a replay with savepoints then, the decisions sent before the COMMIT, a failed
COMMIT failing every job — whatever the jobs are.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from blindrelay.protocol.errors import InternalError

from ...logs import log_event
from .database import checkpoint
from .tables import Tables

Job = Callable[[Tables], Any]
Outcome = tuple[bool, Any]
"""(True, result) or (False, exception), one per job, in job order."""

MAX_JOBS_PER_COMMIT = 1024
"""Upper bound on one group commit; bounds the latency of the batch's first job."""


class GroupCommitter:
    """Runs batches of jobs on the one writing connection, one transaction per batch.

    Used by the writer process (:mod:`.writer_process`); plain callables so
    tests can drive it directly.
    """

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.commits = 0
        """Transactions committed; with ``jobs`` it shows how well commits group."""
        self.jobs = 0
        self.replays = 0
        """Batches run a second time, with savepoints, because a job failed after it
        wrote: each costs its whole batch twice, so jobs refuse before writing."""

    last_commit_s: float = 0.0
    """How long the last batch's COMMIT took (the fsync, with ``synchronous=FULL``)."""

    def commit(
        self, batch: list[Job], decided: Callable[[list[Outcome]], None] | None = None
    ) -> list[Outcome]:
        """Run ``batch`` in one transaction; a failed job undoes only itself.

        ``decided`` gets the outcomes once every job has run and before the COMMIT
        (the writer process sends the SENDs' decisions then); if the COMMIT then
        fails, every job fails all the same.

        Jobs run without a savepoint first: most refusals (consent, resend
        mismatch, queue cap) happen before a job writes anything, and a
        savepoint costs two more statements per job. If a job fails after it
        wrote (``total_changes`` moved), the whole transaction is rolled back
        and the batch is run again with one savepoint per job — the jobs only
        touch the database and the writer cache, so running them again is safe.
        """
        tables = self.tables
        try:
            outcomes = _run_batch(tables, batch, savepoints=False)
            if outcomes is None:
                self.replays += 1
                outcomes = _run_batch(tables, batch, savepoints=True)
            assert outcomes is not None
            tables.usage.flush()  # the batch's metering counts, in its transaction
            if decided is not None:
                decided(outcomes)
            committing = time.perf_counter()
            tables.db.conn.execute("COMMIT")
            self.last_commit_s = time.perf_counter() - committing
        except Exception as exc:
            # The commit itself failed (disk full, I/O error): nothing in the
            # batch is durable, so every job fails and no SENT goes out.
            tables.cache.clear()
            conn = tables.db.conn
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            log_event(40, "commit_failed", exc_type=type(exc).__name__, jobs=len(batch))
            return [(False, InternalError()) for _job in batch]
        self.commits += 1
        self.jobs += len(batch)
        if tables.checkpoint_requested:  # outside the transaction, before any answer
            tables.checkpoint_requested = False
            checkpoint(tables.db)
        return outcomes


def _run_batch(tables: Tables, batch: list[Job], *, savepoints: bool) -> list[Outcome] | None:
    """Outcomes of every job inside an open transaction, or None when a job
    without a savepoint failed after writing (the transaction is rolled back)."""
    conn = tables.db.conn
    cache = tables.cache
    execute = conn.execute
    outcomes: list[Outcome] = []
    append = outcomes.append
    execute("BEGIN IMMEDIATE")
    for job in batch:
        if savepoints:
            execute("SAVEPOINT job")
        before = conn.total_changes
        cache.begin_job()
        try:
            result = job(tables)
        except Exception as exc:
            if not conn.in_transaction:
                raise  # SQLite rolled back everything (e.g. disk full)
            if savepoints:
                execute("ROLLBACK TO job")
                execute("RELEASE job")
            elif conn.total_changes != before:
                cache.clear()
                execute("ROLLBACK")
                return None
            cache.undo_job(wrote=conn.total_changes != before)
            append((False, exc))
            continue
        cache.end_job()
        if savepoints:
            execute("RELEASE job")
        append((True, result))
    return outcomes
