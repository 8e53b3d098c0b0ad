"""Metering: what a business's traffic counts, per UTC calendar month (SPEC §8.4).

One row per (business, month, meter, category): ``notification`` rows carry
the category and are billable; ``service_reply`` and ``user_initiated`` rows
(category ``""``) are free and counted separately. :meth:`UsageMeter.count`
is called from the writer job that enqueues the envelope — "Counts MUST be
committed in the same transaction as the envelope they count" — and an
idempotent resend never reaches it, so it counts once.

Counts are added up in the writer cache (``usage``) and written by
:meth:`UsageMeter.flush`, which the group commit calls right before COMMIT:
one upsert per (business, month, meter, category) per transaction instead of
one per envelope (a fan-out meters every notification; the upsert was ~3.5 µs
of the writer's ~55). Same transaction, so the rule above holds; a job that
fails takes its counts back with the rest of its cache changes, a rolled-back
batch empties them, and reads (:meth:`UsageMeter.months`) flush first.

Not here: which envelopes count (``blindrelay.protocol.consent.may_deliver``
decides the meter), months (``protocol.transparency.bills``), prices (``admin usage``).
"""

from __future__ import annotations

import sqlite_utils

from blindrelay.protocol.consent import Meter
from blindrelay.protocol.transparency.bills import month_span

from ..records import MonthUsage, usage_by_month, usage_query
from .cache import WriterCache


class UsageMeter:
    """The ``usage`` table."""

    def __init__(self, db: sqlite_utils.Database, cache: WriterCache | None = None) -> None:
        self.db = db
        self.cache = cache or WriterCache()
        self._conn = db.conn
        self._month = (0, 0, "")
        """The month of the last count, as :func:`month_span`: every notification of a
        fan-out falls in it, so its name is not formatted again for each one."""

    def count(self, business: str, at: int, meter: Meter, category: str | None) -> str:
        """Add one to the business's counter for ``meter`` in the month of ``at``;
        written by the next :meth:`flush`, in the same transaction. The month."""
        start, end, month = self._month
        if not start <= at < end:
            self._month = start, end, month = month_span(at)
        cache = self.cache
        cache.add(cache.usage, (business, month, meter.value, category or ""), 1)
        return month

    def flush(self) -> None:
        """Write the counts added since the last flush (inside the open transaction)."""
        cache = self.cache
        pending = cache.usage
        if not pending:
            return
        rows = [(*key, n) for key, n in pending.items()]
        for key in list(pending):
            cache.drop(pending, key)  # undone with the job, if a job flushes and then fails
        self._conn.executemany(
            "INSERT INTO usage (business, month, meter, category, count) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (business, month, meter, category)"
            " DO UPDATE SET count = count + excluded.count",
            rows,
        )

    def months(self, business: str | None = None, month: str | None = None) -> list[MonthUsage]:
        """Counts per (business, month), optionally for one business and/or month."""
        self.flush()
        query = usage_query(business, month, lambda _n: "?")
        given = tuple(value for value in (business, month) if value is not None)
        return usage_by_month(self.db.execute(query, given).fetchall())

    def month(self, business: str, month: str) -> MonthUsage:
        found = self.months(business, month)
        return found[0] if found else MonthUsage(business, month)
