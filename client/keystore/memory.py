"""The key store in process memory: for tests and clients that keep nothing.

What it is not: durable, or encrypted — it holds what the SQLite store seals.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .base import LOG_TABLES, ROW_TABLES
from .records import MAX_PROCESSED_IDS, IncomingMessage, require_bytes, require_handle
from .settings import SettingRecords

_ABSENT = object()
"""Undo-journal marker: the key had no value before the write."""


class MemoryKeyStore(SettingRecords):
    """Every table a dict; blocks of writes undone from a journal.

    Single writes need no undo: every primitive validates before it mutates.
    Inside :meth:`atomic` each write first notes the value it replaces (an undo
    journal), so a failing block is rolled back key by key; the two ordered
    tables (processed ids, inbox) are copied whole on their first write instead,
    which keeps their order exact. Blocks nest like SQLite savepoints.
    """

    def __init__(self, *, max_processed_ids: int = MAX_PROCESSED_IDS) -> None:
        self._tables: dict[str, dict[bytes, Sequence[Any]]] = {name: {} for name in ROW_TABLES}
        self._logs: dict[str, dict[str, dict[int, bytes]]] = {name: {} for name in LOG_TABLES}
        """table → group → {sequence number: record}; numbers only grow, so they give the
        order."""
        self._log_seq = 0
        self._processed: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._pending: OrderedDict[tuple[str, bytes], IncomingMessage] = OrderedDict()
        self._max_processed = max_processed_ids
        self._journal: list[tuple[dict[Any, Any], Any, Any]] = []
        self._savepoints: list[tuple[int, dict[str, OrderedDict[Any, Any]]]] = []

    @contextmanager
    def _transaction(self) -> Iterator[object]:
        """All writes in the block, or none of them (an exception undoes them)."""
        self._savepoints.append((len(self._journal), {}))
        try:
            yield self
        except BaseException:
            mark, copies = self._savepoints.pop()
            while len(self._journal) > mark:
                table, key, old = self._journal.pop()
                if old is _ABSENT:
                    table.pop(key, None)
                else:
                    table[key] = old
            for name, copy in copies.items():
                setattr(self, name, copy)
            raise
        else:
            self._savepoints.pop()
            if not self._savepoints:
                self._journal.clear()

    def _touch(self, table: dict[Any, Any], key: object) -> None:
        """Note ``table[key]`` before it changes, if a block may need to undo it."""
        if self._savepoints:
            self._journal.append((table, key, table.get(key, _ABSENT)))

    def _touch_ordered(self, name: str) -> None:
        if not self._savepoints:
            return
        copy: OrderedDict[Any, Any] | None = None
        for _, copies in self._savepoints:
            if name not in copies:
                copy = copy if copy is not None else OrderedDict(getattr(self, name))
                copies[name] = copy

    # Rows

    def _get(self, table: str, key: bytes) -> Sequence[Any] | None:
        return self._tables[table].get(key)

    def _put(self, table: str, key: bytes, fields: Sequence[Any]) -> None:
        rows = self._tables[table]
        self._touch(rows, key)
        rows[key] = fields

    def _delete(self, table: str, key: bytes) -> bool:
        rows = self._tables[table]
        if key not in rows:
            return False
        self._touch(rows, key)
        del rows[key]
        return True

    def _rows(self, table: str) -> list[Sequence[Any]]:
        return list(self._tables[table].values())

    # Logs

    def _append(self, table: str, group: str, record: bytes) -> None:
        groups = self._logs[table]
        entries = groups.get(group)
        if entries is None:
            entries = {}
            self._touch(groups, group)
            groups[group] = entries
        self._log_seq += 1  # not undone by a rollback: a gap keeps the order
        self._touch(entries, self._log_seq)
        entries[self._log_seq] = record

    def _read(self, table: str, group: str, start: int) -> list[bytes]:
        entries = self._logs[table].get(group, {})
        # Sorted: an undone deletion puts an entry back at the dict's end.
        return [entries[seq] for seq in sorted(entries)][start:]

    def _count(self, table: str, group: str) -> int:
        return len(self._logs[table].get(group, {}))

    def _drop(self, table: str, group: str, count: int | None) -> None:
        groups = self._logs[table]
        entries = groups.get(group)
        if entries is None:
            return
        if count is None or count >= len(entries):
            self._touch(groups, group)
            del groups[group]
            return
        for seq in sorted(entries)[:count]:
            self._touch(entries, seq)
            del entries[seq]

    # Incoming messages

    def _add_processed(self, sender: str, msg_id: bytes) -> None:
        self._touch_ordered("_processed")
        self._processed[(sender, msg_id)] = None
        while len(self._processed) > self._max_processed:
            self._processed.popitem(last=False)

    def _add_pending(self, message: IncomingMessage) -> None:
        self._touch_ordered("_pending")
        self._pending[(message.sender, message.msg_id)] = message

    def is_processed(self, sender: str, msg_id: bytes) -> bool:
        require_handle(sender)
        require_bytes("msg_id", msg_id)
        return (sender, msg_id) in self._processed

    def pending_messages(self) -> list[IncomingMessage]:
        return list(self._pending.values())

    def consume(self, sender: str, msg_id: bytes) -> bool:
        require_handle(sender)
        require_bytes("msg_id", msg_id)
        if (sender, msg_id) not in self._pending:
            return False
        self._touch_ordered("_pending")
        del self._pending[(sender, msg_id)]
        return True

    def close(self) -> None:
        """Nothing to release; present so both stores share one lifecycle."""
