"""Write-through caches owned by the writer process, undone with their job.

Why: the writer is the only connection that writes accounts, pairs and the
queue, so it can answer "who is this account", "what is this pair's state" and
"how long is this recipient's queue" from memory instead of three SQL
statements per SEND (they were a third of its CPU). Correctness rests on three
rules, all enforced by ``tables.GroupCommitter``:

- every write to those tables goes through a method that also updates the
  cache (:meth:`WriterCache.put` / :meth:`WriterCache.drop`), so within the
  writer's transaction the cache equals what a read would return;
- a job that fails is undone in SQLite and, through the undo log kept while
  it runs, in the cache too;
- a failed commit (or a rollback of the whole batch) empties the cache, which
  is always safe: every entry is re-read from the database on demand.

Nothing here is shared with the event loop: it lives in the writer process.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

MAX_ENTRIES = 100_000
"""Per table. A full table is emptied rather than evicted entry by entry: refilling
costs one indexed read per key, and it bounds memory whatever the traffic."""

_MISSING: Any = object()


class WriterCache:
    """Accounts by handle, pair states by sorted pair, queue lengths by recipient,
    metering counts not yet written (``usage``, see :mod:`.metering`), and the
    per-sender counts of the few queues long enough for shares to matter
    (``shares``, see ``queue.MessageQueue``)."""

    def __init__(self) -> None:
        self.accounts: dict[str, Any] = {}
        self.pairs: dict[tuple[str, str], Any] = {}
        self.queued: dict[str, int] = {}
        self.usage: dict[tuple[str, str, str, str], int] = {}
        self.shares: dict[str, Any] = {}
        """Mutable entries, changed in place: no undo log. A job that touched them and
        fails empties the table instead (:meth:`touch_shares`); every entry is
        recomputed from the queue on demand."""
        self._undo: list[tuple[dict[Any, Any], Hashable, Any]] | None = None
        self._shares_touched = False

    def put(self, table: dict[Any, Any], key: Hashable, value: Any) -> None:
        """Set ``table[key]``, remembering the old value while a job runs."""
        if self._undo is not None:
            self._undo.append((table, key, table.get(key, _MISSING)))
        if len(table) >= MAX_ENTRIES and key not in table:
            table.clear()
        table[key] = value

    def add(self, table: dict[Any, int], key: Hashable, delta: int) -> None:
        """Add ``delta`` to ``table[key]`` (from 0), remembering the old value while a job runs.

        Never evicts: for tables that are not a cache of the database but
        writes still to be made (``usage``), emptied by their owner.
        """
        old = table.get(key, _MISSING)
        if self._undo is not None:
            self._undo.append((table, key, old))
        table[key] = delta if old is _MISSING else old + delta

    def drop(self, table: dict[Any, Any], key: Hashable) -> None:
        """Forget ``key`` (the next read goes to the database)."""
        if key in table:
            if self._undo is not None:
                self._undo.append((table, key, table[key]))
            del table[key]

    def touch_shares(self) -> None:
        """Called before a job changes an entry of ``shares`` in place."""
        self._shares_touched = True
        if len(self.shares) >= MAX_ENTRIES:
            self.shares.clear()

    def begin_job(self) -> None:
        self._undo = []
        self._shares_touched = False

    def end_job(self) -> None:
        self._undo = None

    def undo_job(self, wrote: bool = True) -> None:
        """Put back what the failed job changed, newest change first.

        ``wrote``: whether it changed the database. A share entry changes in place only
        with the queue row it counts, so one that failed without writing (a SEND refused
        past its share) leaves every entry true, those it counted anew too. Emptied then,
        every such refusal made the next one scan the recipient's queue again (T13a)."""
        undo, self._undo = self._undo or [], None
        for table, key, old in reversed(undo):
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old
        if self._shares_touched and wrote:
            self.shares.clear()

    def clear(self) -> None:
        """After a rollback of the whole transaction: nothing cached can be trusted."""
        self.accounts.clear()
        self.pairs.clear()
        self.queued.clear()
        self.usage.clear()  # rolled back with the envelopes they counted
        self.shares.clear()
        self._undo = None
