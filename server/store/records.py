"""The records a store hands to the relay, the same whichever back end holds them.

Plain frozen values, so handlers, operations and tests can build and compare
them without a database. :func:`envelope_row` is the one shape a queued
envelope takes between a back end and the event loop (operations ``page`` and
``apply_statement`` return it; :func:`..delivery.deliver_row` encodes DELIVER
straight from it).

Not here: how a back end stores them (``sqlite/tables.py``), the rules that
decide what is stored (``rules``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from blindrelay.protocol.consent import Meter


@dataclass(frozen=True, slots=True)
class Account:
    """A handle, its kind and its current identity key (SPEC §3)."""

    handle: str
    kind: str
    identity_key: bytes


@dataclass(frozen=True, slots=True)
class QueuedEnvelope:
    """One queued envelope: opaque ciphertext and the metadata to route it (SPEC §6.4)."""

    delivery_id: int
    recipient: str
    sender: str
    sender_kind: str
    msg_id: bytes
    intent: str
    category: str | None
    categories: tuple[str, ...] | None
    sent_at: int
    body: bytes


def envelope_row(envelope: QueuedEnvelope) -> list[Any]:
    """A queued envelope as msgpack values: [delivery_id, recipient, sender, sender_kind,
    msg_id, intent, category, categories | None, sent_at, body]."""
    return [
        envelope.delivery_id, envelope.recipient, envelope.sender, envelope.sender_kind,
        envelope.msg_id, envelope.intent, envelope.category,
        list(envelope.categories) if envelope.categories is not None else None,
        envelope.sent_at, envelope.body,
    ]  # fmt: skip


@dataclass
class MonthUsage:
    """One business's metering counts for one UTC month (SPEC §8.4)."""

    business: str
    month: str
    notifications: dict[str, int] = field(default_factory=dict)
    service_replies: int = 0
    user_initiated: int = 0


def usage_query(business: str | None, month: str | None, param: Callable[[int], str]) -> str:
    """The metering counts' query for those of ``business`` and ``month`` given (their
    values follow in that order), ``param(n)`` naming the n-th parameter in the back
    end's style. One query per case, so that a business's own month is read by the
    primary key whatever the plan: one ``(? IS NULL OR business = ?)`` for all cases
    read every business's rows of every month for each USAGE_FETCH (threat model T70)."""
    given = [
        name for name, value in (("business", business), ("month", month)) if value is not None
    ]
    where = " AND ".join(f"{name} = {param(n)}" for n, name in enumerate(given, start=1))
    return (
        "SELECT business, month, meter, category, count FROM usage"  # noqa: S608 - our names only
        + (f" WHERE {where}" if where else "")
        + " ORDER BY business, month, meter, category"
    )


def usage_by_month(rows: Iterable[Sequence[Any]]) -> list[MonthUsage]:
    """``usage`` rows (business, month, meter, category, count) as one :class:`MonthUsage`
    per business and month, in the rows' order: one fold for both back ends and the
    admin tool, so a bill cannot count differently by where it is read."""
    result: dict[tuple[str, str], MonthUsage] = {}
    for business, month, meter, category, count in rows:
        usage = result.setdefault((business, month), MonthUsage(business, month))
        if meter == Meter.NOTIFICATION:
            usage.notifications[category] = int(count)
        elif meter == Meter.SERVICE_REPLY:
            usage.service_replies = int(count)
        elif meter == Meter.USER_INITIATED:
            usage.user_initiated = int(count)
    return list(result.values())


@dataclass(frozen=True, slots=True)
class LogHead:
    """A signed tree head as the store keeps it (SPEC §15.3): its fields and its bytes."""

    size: int
    root: bytes
    timestamp: int
    signed: bytes


def head_row(head: LogHead | None) -> list[Any] | None:
    """A tree head as msgpack values: [size, root, timestamp, signed], or nil."""
    return None if head is None else [head.size, head.root, head.timestamp, head.signed]
