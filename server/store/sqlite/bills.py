"""Monthly bills in the SQLite back end (SPEC §8.5, §15.1).

- ``bill_notifications`` — every billed notification of a month whose bill is not
  closed yet: (month, business, at, msg_id) → category, recipient. Written by the
  SEND job that meters it, in the envelope's transaction ("counts MUST be committed
  in the same transaction as the envelope they count", §8.4); keyed by month first,
  so the months to close are a range at the front of the index and a closed month's
  rows leave it.
- ``bills`` — each closed bill: its salt, item count and the log index of its
  ``bill logged`` entry (the entry itself is in ``log_entries``);
- ``bill_items`` — a closed bill's items, their exact bytes, in bill order: what
  BILL pages through. Recipients are kept only as salted commitments from then on.

Closing runs in a writer job (``jobs.close_bills``): it reads a month's rows in
bill order, builds the items and the entry (``protocol.transparency.bills``),
appends the entry to the log and replaces the rows with the items — all in one
transaction, so a bill is logged exactly when its items are kept.

Not here: when bills close (the relay's timer), hashing (the protocol package).
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from blindrelay.protocol.transparency.bills import SentNotification

SCHEMA = """
CREATE TABLE IF NOT EXISTS bill_notifications (
    month TEXT NOT NULL,
    business TEXT NOT NULL,
    at INTEGER NOT NULL,
    msg_id BLOB NOT NULL,
    category TEXT NOT NULL,
    recipient TEXT NOT NULL,
    PRIMARY KEY (month, business, at, msg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bills (
    business TEXT NOT NULL,
    month TEXT NOT NULL,
    salt BLOB NOT NULL,
    count INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (business, month)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bill_items (
    business TEXT NOT NULL,
    month TEXT NOT NULL,
    idx INTEGER NOT NULL,
    item BLOB NOT NULL,
    PRIMARY KEY (business, month, idx)
) WITHOUT ROWID;
"""


class Bills:
    """The three bill tables over one connection (the writer's, or a reader's)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._conn = db.conn

    def record(
        self, business: str, month: str, at: int, msg_id: bytes, category: str, recipient: str
    ) -> None:
        """One billed notification, in the caller's (the envelope's) transaction."""
        self._conn.execute(
            "INSERT INTO bill_notifications (month, business, at, msg_id, category, recipient)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (month, business, at, msg_id, category, recipient),
        )

    def open_months(self, before: str, limit: int) -> list[tuple[str, str]]:
        """(business, month) of bills still open for months before ``before``."""
        rows = self._conn.execute(
            "SELECT DISTINCT month, business FROM bill_notifications WHERE month < ?"
            " ORDER BY month, business LIMIT ?",
            (before, limit),
        )
        return [(business, month) for month, business in rows]

    def notifications(self, business: str, month: str) -> list[SentNotification]:
        rows = self._conn.execute(
            "SELECT msg_id, recipient, category, at FROM bill_notifications"
            " WHERE month = ? AND business = ? ORDER BY at, msg_id",
            (month, business),
        )
        return [SentNotification(bytes(m), r, c, int(a)) for m, r, c, a in rows]

    def closed(self, business: str, month: str) -> tuple[bytes, int, int] | None:
        """(salt, count, log index) of a closed bill."""
        row = self._conn.execute(
            "SELECT salt, count, seq FROM bills WHERE business = ? AND month = ?",
            (business, month),
        ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]), int(row[2]))

    def keep(self, business: str, month: str, salt: bytes, seq: int, items: list[bytes]) -> None:
        """A closed bill and its items, in place of its open rows."""
        conn = self._conn
        conn.execute(
            "INSERT INTO bills (business, month, salt, count, seq) VALUES (?, ?, ?, ?, ?)",
            (business, month, salt, len(items), seq),
        )
        conn.executemany(
            "INSERT INTO bill_items (business, month, idx, item) VALUES (?, ?, ?, ?)",
            [(business, month, idx, item) for idx, item in enumerate(items)],
        )
        self.forget_open(business, month)

    def forget_open(self, business: str, month: str) -> int:
        cursor = self._conn.execute(
            "DELETE FROM bill_notifications WHERE month = ? AND business = ?", (month, business)
        )
        return int(cursor.rowcount)

    def items(self, business: str, month: str, start: int, limit: int) -> list[bytes]:
        rows = self._conn.execute(
            "SELECT item FROM bill_items WHERE business = ? AND month = ? AND idx >= ?"
            " ORDER BY idx LIMIT ?",
            (business, month, start, limit),
        )
        return [bytes(item) for (item,) in rows]

    def all_closed(self, business: str | None, month: str | None) -> list[list[Any]]:
        """[business, month, count, log index] of closed bills, for the operator."""
        rows = self._conn.execute(
            "SELECT business, month, count, seq FROM bills"
            " WHERE (? IS NULL OR business = ?) AND (? IS NULL OR month = ?)"
            " ORDER BY business, month",
            (business, business, month, month),
        )
        return [[b, m, int(c), int(s)] for b, m, c, s in rows]
