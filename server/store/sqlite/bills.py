"""Monthly bills in the SQLite back end (SPEC §8.5, §15.1).

- ``bill_notifications`` — every billed notification of a month whose bill is not
  closed yet: (month, business, at, msg_id) → category, recipient. Written by the
  SEND job that meters it, in the envelope's transaction ("counts MUST be committed
  in the same transaction as the envelope they count", §8.4); keyed by month first,
  so the months to close are a range at the front of the index and a closed month's
  rows leave it.
- ``bills`` — each bill being closed or closed: its salt, the items made so far and
  the right edge of their tree (``edge``, carried between chunks), and once closed the
  log index of its ``bill logged`` entry (``seq``; the entry is in ``log_entries``);
- ``bill_items`` — a closed bill's items, their exact bytes, in bill order: what
  BILL pages through. Recipients are kept only as salted commitments from then on.

Closing runs in writer jobs (``logjobs.close_bills``), ``BILL_CHUNK_ITEMS`` at a time:
each takes the first rows left in bill order, makes their items, and replaces the
rows with them in one transaction; the one that takes the last rows appends the
entry. So a bill is logged exactly when all its items are kept, and a bill of a
million notifications never holds the writer for more than a chunk.

Not here: when bills close (the relay's timer), hashing (the protocol package).
"""

from __future__ import annotations

import sqlite_utils

from blindrelay.protocol.transparency.bills import SentNotification

from ..transparency import BillProgress

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
    edge BLOB NOT NULL,
    seq INTEGER,
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

    def notifications(self, business: str, month: str, limit: int) -> list[SentNotification]:
        """The first ``limit`` rows left of a bill, in bill order (``at``, ``msg_id``)."""
        rows = self._conn.execute(
            "SELECT msg_id, recipient, category, at FROM bill_notifications"
            " WHERE month = ? AND business = ? ORDER BY at, msg_id LIMIT ?",
            (month, business, limit),
        )
        return [SentNotification(bytes(m), r, c, int(a)) for m, r, c, a in rows]

    def closed(self, business: str, month: str) -> tuple[bytes, int, int] | None:
        """(salt, count, log index) of a closed bill (not one being closed)."""
        row = self._conn.execute(
            "SELECT salt, count, seq FROM bills WHERE business = ? AND month = ?"
            " AND seq IS NOT NULL",
            (business, month),
        ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]), int(row[2]))

    def in_progress(self) -> tuple[str, str, BillProgress] | None:
        """A bill being closed, if any: (business, month, its progress)."""
        row = self._conn.execute(
            "SELECT business, month, salt, count, edge FROM bills WHERE seq IS NULL LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return row[0], row[1], BillProgress(bytes(row[2]), int(row[3]), bytes(row[4]))

    def start(self, business: str, month: str, progress: BillProgress) -> None:
        self._conn.execute(
            "INSERT INTO bills (business, month, salt, count, edge) VALUES (?, ?, ?, ?, ?)",
            (business, month, progress.salt, progress.count, progress.edge),
        )

    def take(
        self,
        business: str,
        month: str,
        taken: list[SentNotification],
        items: list[bytes],
        progress: BillProgress,
    ) -> None:
        """``taken`` (the first rows left) become ``items``, and the bill's progress."""
        conn = self._conn
        first = progress.count - len(items)
        conn.executemany(
            "INSERT INTO bill_items (business, month, idx, item) VALUES (?, ?, ?, ?)",
            [(business, month, first + n, item) for n, item in enumerate(items)],
        )
        if taken:
            last = taken[-1]
            conn.execute(
                "DELETE FROM bill_notifications WHERE month = ? AND business = ?"
                " AND (at, msg_id) <= (?, ?)",
                (month, business, last.at, last.msg_id),
            )
        conn.execute(
            "UPDATE bills SET count = ?, edge = ? WHERE business = ? AND month = ?",
            (progress.count, progress.edge, business, month),
        )

    def finish(self, business: str, month: str, seq: int) -> None:
        self._conn.execute(
            "UPDATE bills SET seq = ? WHERE business = ? AND month = ?", (seq, business, month)
        )

    def count_open(self, business: str, month: str) -> int:
        """Rows of a bill not made into items yet."""
        row = self._conn.execute(
            "SELECT count(*) FROM bill_notifications WHERE month = ? AND business = ?",
            (month, business),
        ).fetchone()
        return int(row[0])

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
