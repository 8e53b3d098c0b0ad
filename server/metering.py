"""Metering: what a business's traffic counts, per UTC calendar month (SPEC §8.4).

One row per (business, month, meter, category): ``notification`` rows carry
the category and are billable; ``service_reply`` and ``user_initiated`` rows
(category ``""``) are free and counted separately. :meth:`UsageMeter.count`
is called from the writer job that enqueues the envelope — "Counts MUST be
committed in the same transaction as the envelope they count" — and an
idempotent resend never reaches it, so it counts once.

Not here: which envelopes count (``blindrelay.protocol.consent.may_deliver``
decides the meter), prices (``admin usage``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import sqlite_utils

from blindrelay.protocol.consent import Meter


def month_of(ms: int) -> str:
    """``YYYY-MM`` of a relay time, in UTC."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m")


def month_span(ms: int) -> tuple[int, int, str]:
    """(first ms of the UTC month of ``ms``, first ms of the next one, ``YYYY-MM``)."""
    day = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    start = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return int(start.timestamp()) * 1000, int(end.timestamp()) * 1000, start.strftime("%Y-%m")


@dataclass
class MonthUsage:
    """One business's counts for one month."""

    business: str
    month: str
    notifications: dict[str, int] = field(default_factory=dict)
    service_replies: int = 0
    user_initiated: int = 0


class UsageMeter:
    """The ``usage`` table."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._conn = db.conn
        self._month = (0, 0, "")
        """The month of the last count, as :func:`month_span`: every notification of a
        fan-out falls in it, so its name is not formatted again for each one."""

    def count(self, business: str, at: int, meter: Meter, category: str | None) -> None:
        """Add one to the business's counter for ``meter`` in the month of ``at``."""
        start, end, month = self._month
        if not start <= at < end:
            self._month = start, end, month = month_span(at)
        self._conn.execute(
            "INSERT INTO usage (business, month, meter, category, count) VALUES (?, ?, ?, ?, 1)"
            " ON CONFLICT (business, month, meter, category) DO UPDATE SET count = count + 1",
            (business, month, meter.value, category or ""),
        )

    def months(self, business: str | None = None, month: str | None = None) -> list[MonthUsage]:
        """Counts per (business, month), optionally for one business and/or month."""
        rows = self.db.execute(
            "SELECT business, month, meter, category, count FROM usage"
            " WHERE (? IS NULL OR business = ?) AND (? IS NULL OR month = ?)"
            " ORDER BY business, month, meter, category",
            (business, business, month, month),
        ).fetchall()
        result: dict[tuple[str, str], MonthUsage] = {}
        for name, when, meter, category, count in rows:
            usage = result.setdefault((name, when), MonthUsage(name, when))
            if meter == Meter.NOTIFICATION:
                usage.notifications[category] = int(count)
            elif meter == Meter.SERVICE_REPLY:
                usage.service_replies = int(count)
            elif meter == Meter.USER_INITIATED:
                usage.user_initiated = int(count)
        return list(result.values())

    def month(self, business: str, month: str) -> MonthUsage:
        found = self.months(business, month)
        return found[0] if found else MonthUsage(business, month)
