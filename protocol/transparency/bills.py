"""Monthly bills a business can check item by item (SPEC §8.5, §15.1).

The relay meters a business's notifications (§8.4). When a UTC month is over it
*closes* the business's bill for it: every billed notification becomes a
:class:`~.entries.BillItem` (its msg_id, category, acceptance time and a salted
commitment to its recipient), in the order accepted, and the bill's RFC 9162 root
over those items goes into the log as a :class:`~.entries.BillLogged` entry.
Once the bill is logged, the relay cannot show one business a bill and an
auditor another, nor change it later: :func:`verify_bill` checks that the items
a business was given hash to the logged root, under a signed tree head.

What the log cannot know is whether the items are *right*: only the business
saw its SENT frames. :func:`reconcile` holds the verified bill against the
notifications it kept (:class:`SentNotification`) and names every billed item it
has no SENT for (over-billing), every SENT that was not billed (under-billing,
or a dropped item), and every item whose category, time or recipient differs.

Pure functions: the relay closes bills with :func:`close_bill` inside its
store, the SDK verifies and reconciles with the other two.

Not here: when bills close and how they are fetched (the server, BILL_FETCH),
which notifications a business kept (the SDK's keystore).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from blindrelay.protocol.errors import InvalidProof

from . import merkle
from .entries import (
    SALT_LEN,
    BillItem,
    BillLogged,
    bill_root,
    decode_bill_item,
    decode_entry,
    recipient_commitment,
)
from .treehead import TreeHead, open_tree_head


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


def month_of(ms: int) -> str:
    """``YYYY-MM`` of a relay time, in UTC: the month a count or bill item falls in."""
    return month_span(ms)[2]


def month_end(month: str) -> int:
    """The first ms after ``month`` (``YYYY-MM``, UTC): when its bill may close."""
    year, number = int(month[:4]), int(month[5:7])
    first = datetime.datetime(year, number, 1, tzinfo=datetime.UTC)
    return month_span(int(first.timestamp()) * 1000)[1]


class SentNotification(NamedTuple):
    """A notification the relay committed (its SENT): what a business keeps to check a
    bill, and what the relay keeps until the month's bill is closed."""

    msg_id: bytes
    recipient: str
    category: str
    at: int
    """The SENT's ``at``: the relay's acceptance time (SPEC §6.3)."""


def bill_items(notifications: Iterable[SentNotification], salt: bytes) -> list[BillItem]:
    """The items of ``notifications`` (already in bill order), each naming its recipient
    by the commitment under ``salt``."""
    if len(salt) != SALT_LEN:
        raise ValueError(f"a bill's salt is {SALT_LEN} bytes")
    return [
        BillItem(
            v=1,
            msg_id=n.msg_id,
            category=n.category,
            at=n.at,
            recipient=recipient_commitment(n.recipient, salt),
        )
        for n in notifications
    ]


def close_bill(
    handle: str,
    month: str,
    notifications: Iterable[SentNotification],
    salt: bytes,
    now: int,
) -> tuple[BillLogged, list[BillItem]]:
    """The bill of ``handle`` for ``month``: its log entry and items, ordered by
    (``at``, ``msg_id``) as SPEC §15.1 says; ``salt`` is 16 random bytes."""
    items = bill_items(sorted(notifications, key=lambda n: (n.at, n.msg_id)), salt)
    entry = BillLogged(
        v=1, handle=handle, month=month, count=len(items), root=bill_root(items), at=now
    )
    return entry, items


@dataclass(frozen=True, slots=True)
class VerifiedBill:
    """A bill whose items hash to an entry of the log, under a head the relay signed."""

    entry: BillLogged
    index: int
    """The entry's leaf index in the relay's log."""
    tree_head: TreeHead
    salt: bytes
    items: tuple[BillItem, ...]


def verify_bill_entry(
    relay_key: bytes,
    handle: str,
    month: str,
    entry: bytes,
    index: int,
    proof: Sequence[bytes],
    tree_head: bytes,
) -> tuple[BillLogged, TreeHead]:
    """Raise unless ``entry`` is the bill of ``handle`` for ``month`` in the log under
    ``tree_head``: the head's signature (:class:`~blindrelay.protocol.errors.InvalidTreeHead`),
    the entry (``MalformedLogEntry``; :class:`InvalidProof` if it is another bill) and
    its inclusion. What a page of a bill proves alone, before its items are worth reading:
    the logged count is what bounds them."""
    head = open_tree_head(tree_head, relay_key)
    logged = decode_entry(entry)
    if not isinstance(logged, BillLogged):
        raise InvalidProof("the entry is not a bill")
    if (logged.handle, logged.month) != (handle, month):
        raise InvalidProof(f"the entry is the bill of {logged.handle} for {logged.month}")
    merkle.verify_inclusion(merkle.leaf_hash(entry), index, head.size, proof, head.root)
    return logged, head


def verify_bill(
    relay_key: bytes,
    handle: str,
    month: str,
    entry: bytes,
    index: int,
    proof: Sequence[bytes],
    tree_head: bytes,
    salt: bytes,
    items: Sequence[bytes],
) -> VerifiedBill:
    """Raise unless ``items`` are the bill of ``handle`` for ``month`` that the relay
    logged: :func:`verify_bill_entry`, then the items' count and root
    (:class:`InvalidProof`)."""
    logged, head = verify_bill_entry(relay_key, handle, month, entry, index, proof, tree_head)
    if len(salt) != SALT_LEN:
        raise InvalidProof(f"the salt is not {SALT_LEN} bytes")
    decoded = tuple(decode_bill_item(item) for item in items)
    if len(decoded) != logged.count:
        raise InvalidProof(f"{len(decoded)} items given for a bill of {logged.count}")
    if bill_root(decoded) != logged.root:
        raise InvalidProof("the items do not hash to the logged bill's root")
    return VerifiedBill(logged, index, head, bytes(salt), decoded)


@dataclass(frozen=True, slots=True)
class BillReconciliation:
    """A verified bill held against the notifications the business kept for its month."""

    month: str
    billed: int
    matched: int
    extra: tuple[BillItem, ...] = ()
    """Billed, but the business has no SENT for that msg_id: over-billing."""
    missing: tuple[SentNotification, ...] = ()
    """SENT to the business in that month, but not billed: a dropped item."""
    differing: tuple[tuple[SentNotification, BillItem], ...] = field(default=())
    """Billed under the msg_id of a kept SENT, with another category, time or recipient."""

    @property
    def ok(self) -> bool:
        return not (self.extra or self.missing or self.differing)

    def summary(self) -> str:
        """One line a person can act on."""
        if self.ok:
            return f"bill for {self.month}: {self.billed} notifications, every one matches a SENT"
        return (
            f"bill for {self.month} does not match: {self.billed} billed, {self.matched} "
            f"matched, {len(self.extra)} billed without a SENT, {len(self.missing)} SENT "
            f"but not billed, {len(self.differing)} differing"
        )


def reconcile(bill: VerifiedBill, kept: Iterable[SentNotification]) -> BillReconciliation:
    """Match every item of ``bill`` to a kept SENT of its month by msg_id. A SENT billed
    more than once matches one item equal to it (if any); every other copy is extra."""
    month = bill.entry.month
    by_id: dict[bytes, list[BillItem]] = {}
    for item in bill.items:
        by_id.setdefault(item.msg_id, []).append(item)
    extra: list[BillItem] = []
    missing: list[SentNotification] = []
    differing: list[tuple[SentNotification, BillItem]] = []
    matched = 0
    for sent in kept:
        if month_of(sent.at) != month:
            continue
        copies = by_id.pop(sent.msg_id, None)
        if copies is None:
            missing.append(sent)
            continue
        expected = (sent.category, sent.at, recipient_commitment(sent.recipient, bill.salt))
        equal = [c for c in copies if (c.category, c.at, c.recipient) == expected]
        if equal:
            matched += 1
            copies.remove(equal[0])
        else:
            differing.append((sent, copies.pop(0)))
        extra += copies
    for copies in by_id.values():  # billed, and no SENT of ours has that msg_id
        extra += copies
    return BillReconciliation(
        month, len(bill.items), matched, tuple(extra), tuple(missing), tuple(differing)
    )
