"""The queue and the idempotence memory (SPEC §6): envelopes awaiting acknowledgement
in delivery-id order, and the message ids already accepted (``sent``).

Why a module of its own: the queue is the writer's hottest table and carries rules of
its own — the per-recipient cap and shares kept in the writer's cache, expiry, itemized
acknowledgements of forwarded statements — as the ledger (:mod:`.ledger`) and metering
(:mod:`.metering`) do; :class:`~.tables.Tables` holds it as ``Tables.queue``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from blindrelay.protocol.errors import MessageIdReused, QueueFull

from ..records import Account, QueuedEnvelope
from ..rules import QueueShares
from .cache import WriterCache
from .leasing import LeaseBroken


@dataclass(frozen=True, slots=True)
class Accepted:
    """Outcome of an enqueue: ``envelope`` is None for an idempotent resend."""

    at: int
    envelope: QueuedEnvelope | None


STATEMENTS_SINCE = (
    "SELECT COUNT(*) FROM queue INDEXED BY queue_statements"
    " WHERE recipient = ?1 AND intent = 'statement' AND sent_at >= ?2"
)
EXPIRED_ENVELOPES = (
    "SELECT COUNT(*) FROM queue WHERE recipient = ?1 AND intent != 'statement'"
    " AND delivery_id < coalesce((SELECT delivery_id FROM queue WHERE recipient = ?1"
    " AND intent != 'statement' AND sent_at >= ?2 ORDER BY delivery_id LIMIT 1), 1 << 62)"
)
"""A recipient's envelopes sent before ``?2``: those before its first one that is not."""

_QUEUE_COLUMNS = (
    "delivery_id, recipient, sender, sender_kind, msg_id, intent, category, categories,"
    " sent_at, body"
)


class MessageQueue:
    """Envelopes awaiting acknowledgement, and the message ids already accepted (SPEC §6).

    Queue lengths per recipient (for the cap) live in the writer's cache,
    seeded by one ``COUNT(*)`` and then kept by every insert and delete here.
    They count envelopes only: forwarded statements (intent ``statement``) are
    outside the cap (SPEC §7.5) and bounded by superseding instead. Statements
    are only ever queued for businesses, so a user's acknowledgement deletes
    envelopes only; a business's is itemized (:meth:`acknowledge`).
    """

    def __init__(self, db: sqlite_utils.Database, cache: WriterCache | None = None) -> None:
        self.db = db
        self.cache = cache or WriterCache()
        self._conn = db.conn
        self._last_id: int | None = None
        """The last delivery id inserted here (None: read ``sqlite_sequence`` first)."""

    def queued(self, recipient: str) -> int:
        """Envelopes queued for ``recipient``, expired or not, statements not (what the
        cap counts)."""
        cache = self.cache
        count = cache.queued.get(recipient)
        if count is None:
            count = int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM queue WHERE recipient = ? AND intent != 'statement'",
                    (recipient,),
                ).fetchone()[0]
            )
            cache.put(cache.queued, recipient, count)
        return count

    def _added(self, recipient: str, delta: int) -> None:
        cache = self.cache
        count = cache.queued.get(recipient)
        if count is not None and delta:
            cache.put(cache.queued, recipient, count + delta)

    def shares(self, recipient: str, floor: int) -> QueueShares:
        """Envelopes of ``recipient``'s queue per sender and from strangers.

        Called only once the queue is ``floor`` long: one scan of the recipient's
        rows, then kept up to date by every insert and acknowledgement (which is
        itemized while an entry exists) until the queue is shorter than ``floor``
        again; a purge or withdrawal just forgets it.
        """
        cache = self.cache
        shares: QueueShares | None = cache.shares.get(recipient)
        if shares is None:
            shares = QueueShares(floor, 0, {})
            for sender, stranger, count in self._conn.execute(
                "SELECT sender, stranger, COUNT(*) FROM queue"
                " WHERE recipient = ? AND intent != 'statement' GROUP BY sender, stranger",
                (recipient,),
            ):
                shares.change(sender, bool(stranger), int(count))
            cache.touch_shares()
            cache.shares[recipient] = shares
        return shares

    def _shared(self, recipient: str, sender: str, stranger: bool, delta: int) -> None:
        shares: QueueShares | None = self.cache.shares.get(recipient)
        if shares is not None:
            self.cache.touch_shares()
            shares.change(sender, stranger, delta)

    def _forget_shares(self, recipient: str) -> None:
        if recipient in self.cache.shares:
            self.cache.touch_shares()
            del self.cache.shares[recipient]

    def enqueue(
        self,
        recipient: str,
        sender: Account,
        msg_id: bytes,
        intent: str,
        category: str | None,
        categories: tuple[str, ...] | None,
        body: bytes,
        digest: bytes,
        now: int,
        cap: int,
    ) -> Accepted:
        """Store one envelope, or recognise a resend (SPEC §6.3).

        Order of checks: a known (sender, msg_id) is answered from ``sent``
        before the cap, so a resend of a stored envelope always succeeds.
        """
        known = self.remembered(sender.handle, msg_id, digest)
        if known is not None:
            return known
        return self.add(
            recipient, sender, msg_id, intent, category, categories, body, digest, now, cap
        )

    def add(
        self,
        recipient: str,
        sender: Account,
        msg_id: bytes,
        intent: str,
        category: str | None,
        categories: tuple[str, ...] | None,
        body: bytes,
        digest: bytes,
        now: int,
        cap: int,
    ) -> Accepted:
        """:meth:`enqueue` for a caller that has already checked :meth:`remembered`.

        Refuses (QueueFull) before writing anything, so a refusal needs no rollback.
        """
        if self.queued(recipient) >= cap:
            raise QueueFull()
        joined = ",".join(categories) if categories is not None else None
        execute = self._conn.execute
        cursor = execute(
            "INSERT INTO queue (recipient, sender, sender_kind, msg_id, intent, category,"
            " categories, sent_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (recipient, sender.handle, sender.kind, msg_id, intent, category, joined, now, body),
        )
        delivery_id = cursor.lastrowid
        self._last_id = delivery_id
        execute(
            "INSERT INTO sent (sender, msg_id, digest, at) VALUES (?, ?, ?, ?)",
            (sender.handle, msg_id, digest, now),
        )
        self._added(recipient, 1)
        self._shared(recipient, sender.handle, False, 1)
        assert delivery_id is not None
        envelope = QueuedEnvelope(
            delivery_id, recipient, sender.handle, sender.kind, msg_id, intent, category,
            categories, now, body,
        )  # fmt: skip
        return Accepted(at=now, envelope=envelope)

    def add_if_new(
        self,
        recipient: str,
        sender: Account,
        msg_id: bytes,
        intent: str,
        category: str | None,
        categories: list[str] | None,
        body: bytes,
        digest: bytes,
        now: int,
        stranger: bool = False,
        delivery_id: int | None = None,
    ) -> tuple[int, int] | None:
        """The new envelope's delivery id and the highest one queued for ``recipient``
        before it (0: none), or None (nothing written) when (sender, msg_id) is already
        in ``sent`` — a resend, for :meth:`remembered`.

        For SEND's hot path: one ``INSERT OR IGNORE`` tells new from resend
        instead of a SELECT before the INSERT. The caller has checked consent,
        the cap and the shares, answering resends first on those refusals.
        ``stranger``: the envelope counts towards the strangers' pool (SPEC §6.3).
        ``delivery_id``: given by the relay process (SPEC §6.4.6), else the next one.
        """
        execute = self._conn.execute
        if (
            execute(
                "INSERT OR IGNORE INTO sent (sender, msg_id, digest, at) VALUES (?, ?, ?, ?)",
                (sender.handle, msg_id, digest, now),
            ).rowcount
            == 0
        ):
            return None
        joined = ",".join(categories) if categories is not None else None
        previous = execute(
            "SELECT max(delivery_id) FROM queue WHERE recipient = ?", (recipient,)
        ).fetchone()[0]
        cursor = execute(
            "INSERT INTO queue (delivery_id, recipient, sender, sender_kind, msg_id, intent,"
            " category, categories, sent_at, body, stranger)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.next_id(delivery_id), recipient, sender.handle, sender.kind, msg_id, intent,
             category, joined, now, body, stranger),
        )  # fmt: skip
        self._added(recipient, 1)
        if recipient in self.cache.shares:
            self._shared(recipient, sender.handle, stranger, 1)
        assert cursor.lastrowid is not None
        self._last_id = cursor.lastrowid
        return cursor.lastrowid, previous or 0

    def next_id(self, given: int | None) -> int | None:
        """The delivery id an insert takes: ``given`` (SPEC §6.4.6: numbered by the relay
        process, which pushed it already, perhaps), which must follow every id before it
        — or None, SQLite's next. Why the check: a DELIVER pushed under an id that an
        older envelope holds, or out of order, would be a broken promise, so it fails
        the job (:class:`.leasing.LeaseBroken`) rather than store it."""
        if given is None:
            return None
        last = self._last_id
        if last is None:
            row = self._conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'queue'"
            ).fetchone()
            last = int(row[0]) if row is not None else 0
        if given <= last:
            raise LeaseBroken(f"delivery id {given} after {last}")
        self._last_id = given
        return given

    def remembered(self, sender: str, msg_id: bytes, digest: bytes) -> Accepted | None:
        """The original acceptance of a resend, or None for a new ``msg_id`` (SPEC §6.3)."""
        known = self._conn.execute(
            "SELECT digest, at FROM sent WHERE sender = ? AND msg_id = ?", (sender, msg_id)
        ).fetchone()
        if known is None:
            return None
        if bytes(known[0]) != digest:
            raise MessageIdReused()
        return Accepted(at=int(known[1]), envelope=None)

    def enqueue_statement(
        self,
        recipient: str,
        sender: Account,
        nonce: bytes,
        signed: bytes,
        now: int,
        delivery_id: int | None = None,
    ) -> QueuedEnvelope:
        """Queue a forwarded statement (SPEC §7.5): intent ``statement``, msg_id = nonce.

        Neither subject to nor counted by the queue cap, and not remembered in
        ``sent``: a receipt is never refused, and its (signer, nonce) is unique
        already. What bounds them is :meth:`withdraw_statements`.
        """
        cursor = self.db.execute(
            "INSERT INTO queue (delivery_id, recipient, sender, sender_kind, msg_id, intent,"
            " category, categories, sent_at, body)"
            " VALUES (?, ?, ?, ?, ?, 'statement', NULL, NULL, ?, ?)",
            (self.next_id(delivery_id), recipient, sender.handle, sender.kind, nonce, now,
             signed),
        )  # fmt: skip
        delivery_id = cursor.lastrowid
        assert delivery_id is not None
        self._last_id = delivery_id
        return QueuedEnvelope(
            delivery_id, recipient, sender.handle, sender.kind, nonce, "statement", None, None,
            now, signed,
        )  # fmt: skip

    def withdraw(
        self, recipient: str, sender: str, notification_categories: frozenset[str] | None
    ) -> list[int]:
        """Delete undelivered envelopes from ``sender`` to ``recipient`` (SPEC §7.4).

        All of them with ``notification_categories`` None (a block), else only
        notifications of those categories (a revoke). Returns the delivery ids.
        """
        if notification_categories is None:
            rows = self.db.execute(
                "DELETE FROM queue WHERE recipient = ? AND sender = ?"
                " RETURNING delivery_id, intent",
                (recipient, sender),
            ).fetchall()
        else:
            marks = ",".join("?" * len(notification_categories))
            rows = self.db.execute(
                "DELETE FROM queue WHERE recipient = ? AND sender = ?"  # noqa: S608 - marks only
                f" AND intent = 'notification' AND category IN ({marks})"
                " RETURNING delivery_id, intent",
                (recipient, sender, *sorted(notification_categories)),
            ).fetchall()
        self._added(recipient, -sum(1 for row in rows if row[1] != "statement"))
        self._forget_shares(recipient)
        return sorted(int(row[0]) for row in rows)

    def withdraw_statements(self, recipient: str, signer: str, nonces: list[bytes]) -> list[int]:
        """Delete the undelivered forwarded statements with these nonces (SPEC §7.5:
        superseded by a newer one of the same signer, target and family)."""
        if not nonces:
            return []
        marks = ",".join("?" * len(nonces))
        rows = self.db.execute(
            "DELETE FROM queue WHERE recipient = ? AND sender = ?"  # noqa: S608 - marks only
            f" AND intent = 'statement' AND msg_id IN ({marks}) RETURNING delivery_id",
            (recipient, signer, *nonces),
        ).fetchall()
        return sorted(int(row[0]) for row in rows)

    def count(self, recipient: str, not_before: int) -> int:
        """Envelopes and statements queued for ``recipient`` from ``not_before`` on
        (WELCOME's ``queued``), without reading every row: a COUNT of them read up to the
        cap's 10,000 in the writer at every LOGIN, 2.4–12.5 ms (threat model T82). The
        cap's count (cached) plus the statements (their index), less the oldest envelopes
        sent before ``not_before`` (queued in time order: the walk stops at the first that
        is not), which the purge deletes within its interval."""
        execute = self._conn.execute
        statements = execute(STATEMENTS_SINCE, (recipient, not_before)).fetchone()[0]
        expired = execute(EXPIRED_ENVELOPES, (recipient, not_before)).fetchone()[0]
        return self.queued(recipient) + int(statements) - int(expired)

    def page(
        self, recipient: str, after: int, limit: int, not_before: int,
        max_bytes: int | None = None,
    ) -> list[QueuedEnvelope]:
        """Up to ``limit`` unexpired envelopes with delivery id > ``after``, in id order,
        read no further than the one whose body brings their bodies to ``max_bytes``."""
        cursor = self.db.execute(
            f"SELECT {_QUEUE_COLUMNS} FROM queue"  # noqa: S608 - constant column list
            " WHERE recipient = ? AND delivery_id > ? AND sent_at >= ?"
            " ORDER BY delivery_id LIMIT ?",
            (recipient, after, not_before, limit),
        )
        envelopes, total = [], 0
        for row in cursor:  # rows are read as they are asked for: the rest never are
            envelopes.append(_envelope(row))
            total += len(row[-1])
            if max_bytes is not None and total >= max_bytes:
                break
        cursor.close()
        return envelopes

    def acknowledge(
        self, recipient: str, delivery_ids: Iterable[int], *, itemized: bool = False
    ) -> int:
        """Delete acknowledged rows addressed to ``recipient``; others are ignored.

        ``itemized`` (a business, whose queue may hold statements) deletes row by
        row to learn what each was, and so does a queue whose shares are kept;
        otherwise every row deleted is an envelope and one ``executemany`` does
        (the fan-out's hot path).
        """
        shares: QueueShares | None = self.cache.shares.get(recipient)
        if not itemized and shares is None:
            cursor = self._conn.executemany(
                "DELETE FROM queue WHERE delivery_id = ? AND recipient = ?",
                [(delivery_id, recipient) for delivery_id in delivery_ids],
            )
            self._added(recipient, -cursor.rowcount)
            return cursor.rowcount
        execute = self._conn.execute
        deleted = envelopes = 0
        if shares is not None:
            self.cache.touch_shares()
        for delivery_id in delivery_ids:
            row = execute(
                "DELETE FROM queue WHERE delivery_id = ? AND recipient = ?"
                " RETURNING intent, sender, stranger",
                (delivery_id, recipient),
            ).fetchone()
            if row is not None and row[0] != "statement":
                envelopes += 1
                if shares is not None:
                    shares.change(row[1], bool(row[2]), -1)
            deleted += row is not None
        self._added(recipient, -envelopes)
        if shares is not None and self.queued(recipient) < shares.floor:
            self._forget_shares(recipient)  # back to the one-statement acknowledgement
        return deleted

    def purge(self, before: int) -> tuple[int, int]:
        """Drop envelopes and remembered message ids older than ``before`` (SPEC §6.6)."""
        envelopes = self.db.execute("DELETE FROM queue WHERE sent_at < ?", (before,)).rowcount
        ids = self.db.execute("DELETE FROM sent WHERE at < ?", (before,)).rowcount
        if envelopes:
            # Any recipient may have lost rows: re-count on demand (rare, bounded work).
            for recipient in list(self.cache.queued):
                self.cache.drop(self.cache.queued, recipient)
            self.cache.touch_shares()
            self.cache.shares.clear()
        return envelopes, ids


def _envelope(row: tuple[Any, ...]) -> QueuedEnvelope:
    categories = tuple(row[7].split(",")) if row[7] is not None else None
    return QueuedEnvelope(
        int(row[0]), row[1], row[2], row[3], bytes(row[4]), row[5], row[6], categories,
        int(row[8]), bytes(row[9]),
    )  # fmt: skip
