"""The storage primitives every record kind is written over, and the tables they name.

A store implements a handful of primitives over named tables — keyed rows of
fields, per-group append-only logs, and the two ordered tables of incoming
messages — and inherits every typed method from the record kinds
(``keys``, ``conversations``, ``settings``), which are written once over
them. So the in-memory and SQLite stores decide identically by construction;
only where and how a row is kept differs.

What it is not: a record kind (those are the mixins) or a storage engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from .records import IncomingMessage

ROW_TABLES = (
    "settings", "signed_prekeys", "one_time_prekeys", "sessions", "identities", "key_owners",
    "identity_changes", "outbox", "statement_counts", "held_counts", "owed_receipts",
    "wrote_to", "away_replies", "chat_contacts", "consent_requests", "published",
    "heard_heads", "log_forks",
)  # fmt: skip
"""One row per natural key, one table per kind of record (see each kind's module):
``key_owners`` maps an identity key to the handle it is pinned for (SPEC §13.8);
``published`` the accounts seen published and the key last proven logged (SPEC §15.6);
``heard_heads`` a contact's tree head the relay has not proven consistent yet (§15.6);
``log_forks`` the split-view alarm's two heads, per relay key (§15.6)."""

LOG_TABLES = ("statements", "held_messages", "sent_notifications", "chat_history")
"""Per group (a counterpart; a month for ``sent_notifications``), records in the order
they were appended; adding one costs the same however many the group holds."""

TABLES = frozenset(ROW_TABLES + LOG_TABLES + ("processed", "inbox"))
"""Every table name a store interpolates into SQL comes from here, never from a caller."""


def handle_key(handle: str) -> bytes:
    """The natural key of a row kept per account."""
    return handle.encode()


class Storage(ABC):
    """The primitives a store provides; rows are sequences of msgpack-able fields.

    Rows are written as tuples: in memory they stay out of the garbage collector's
    way (a business keeps a row or three per customer). Callers never mutate a row
    they read (a store may hand out its cached copy).
    Every primitive is all-or-nothing by itself; :meth:`_transaction` groups them.
    """

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[object]:
        """All writes inside, or none; nested blocks act as savepoints."""

    @abstractmethod
    def _get(self, table: str, key: bytes) -> Sequence[Any] | None: ...

    @abstractmethod
    def _put(self, table: str, key: bytes, fields: Sequence[Any]) -> None: ...

    @abstractmethod
    def _delete(self, table: str, key: bytes) -> bool:
        """Remove a row; True if there was one."""

    @abstractmethod
    def _rows(self, table: str) -> list[Sequence[Any]]:
        """Every row of one table (and nothing of any other), in no promised order."""

    @abstractmethod
    def _append(self, table: str, group: str, record: bytes) -> None: ...

    @abstractmethod
    def _read(self, table: str, group: str, start: int) -> list[bytes]:
        """A group's records from the ``start``-th on, oldest first."""

    @abstractmethod
    def _drop(self, table: str, group: str, count: int | None) -> None:
        """Delete a group's ``count`` oldest records (all of them for None)."""

    @abstractmethod
    def _count(self, table: str, group: str) -> int:
        """How many records a group holds (none opened)."""

    # The ordered tables of incoming messages

    @abstractmethod
    def _add_processed(self, sender: str, msg_id: bytes) -> None:
        """Remember an envelope id, forgetting the oldest beyond the store's cap."""

    @abstractmethod
    def _add_pending(self, message: IncomingMessage) -> None:
        """Append a decrypted message to the inbox."""

    @abstractmethod
    def is_processed(self, sender: str, msg_id: bytes) -> bool: ...

    @abstractmethod
    def pending_messages(self) -> list[IncomingMessage]: ...

    @abstractmethod
    def consume(self, sender: str, msg_id: bytes) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    def atomic(self) -> AbstractContextManager[object]:
        """All writes in the block, or none: one transaction (a savepoint when nested)."""
        return self._transaction()
