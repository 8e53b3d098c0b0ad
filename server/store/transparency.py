"""What the store appends to the transparency log, and which tree heads it keeps (SPEC §15).

Both back ends call these pure functions inside the operation that makes the
change, so the entry commits in the same transaction as what it records — a
business registered, a key rotated, a statement accepted, a badge issued or
revoked — or not at all:

- :func:`key_binding` — a business's key at registration and each rotation, a
  user's from its DISCOVERABLE on (SPEC §15.6); the back ends keep, per published
  handle, the index of its newest binding (``log_bindings``), which BUNDLE proves;
- :func:`statement_logged` — every accepted statement, as the hash of its bytes;
- :func:`badge_issued` / :func:`badge_revoked` — the operator's badges;
- :func:`new_bill`, :func:`bill_chunk`, :func:`bill_entry` — a business's bill for a
  month once the month is over (§8.5), closed a chunk of items at a time: the
  recipients' commitments under a fresh random salt, the tree's right edge carried
  between chunks, the entry once every item is made.

:func:`accept_head` is the rule for a new signed tree head: only a head whose
root is the store's own root at that size, no smaller and no older than the
newest head kept, is stored. The tree is append-only and its complete subtrees
never change, so every head kept is consistent with every earlier one.

Not here: the tables (``sqlite/transparency.py``, ``postgresql/transparency.py``),
signing (the relay holds its key), hashing (the protocol package).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from blindrelay.protocol.errors import InternalError, MalformedLogEntry, NotFound, ProtocolError
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.signed import ConsentStatement, unverified_body
from blindrelay.protocol.transparency import entries, merkle
from blindrelay.protocol.transparency.bills import SentNotification, bill_items
from blindrelay.protocol.transparency.entries import KeyBinding, decode_entry
from blindrelay.protocol.transparency.treehead import TreeHead

from .records import LogHead


def key_binding(
    handle: str,
    kind: str,
    identity_key: bytes,
    now: int,
    previous_key: bytes | None = None,
    *,
    published: bool = False,
) -> bytes | None:
    """The entry for a key, or None when the account is not published: a user that
    has not sent DISCOVERABLE (SPEC §15.6 rule 4). A business always is."""
    if kind != AccountKind.BUSINESS and not published:
        return None
    return entries.KeyBinding(
        v=1, handle=handle, kind=kind, identity_key=identity_key, at=now,
        previous_key=previous_key,
    ).to_bytes()  # fmt: skip


def statement_logged(signed: bytes) -> bytes:
    """The commitment, dated by the statement's own ``issued_at`` (which the relay has
    checked against its clock, §7.4): whoever holds the statement rebuilds this entry
    byte for byte and asks where it is (§15.6)."""
    issued_at = unverified_body(ConsentStatement, signed).issued_at
    return entries.StatementLogged(
        v=1, commitment=entries.statement_commitment(signed), at=issued_at
    ).to_bytes()


def badge_issued(handle: str, serial: int, signed: bytes, now: int) -> bytes:
    return entries.BadgeIssued(v=1, handle=handle, serial=serial, badge=signed, at=now).to_bytes()


def badge_revoked(handle: str, serial: int, now: int) -> bytes:
    return entries.BadgeRevoked(v=1, handle=handle, serial=serial, at=now).to_bytes()


BILL_CHUNK_ITEMS = 5_000
"""Notifications one ``close_bills`` operation turns into bill items at most (~60 ms of
the SQLite writer): a month's bill of a million notifications closes in 200 operations
that other work goes between, not one that stalls every SEND for seconds."""

MAX_BILL_ITEMS_WHOLE = 2**62
"""``bill_page``'s limit when the operator reads a bill whole (``AdminStore.bill``)."""


@dataclass(frozen=True, slots=True)
class BillProgress:
    """A bill being closed: its salt, the items made so far and the right edge of their
    tree (``merkle.nodes_of(0, count)``'s hashes, concatenated), kept between chunks."""

    salt: bytes
    count: int
    edge: bytes


def new_bill() -> BillProgress:
    """A bill's start: 16 random bytes of salt (SPEC §15.1), no items."""
    return BillProgress(os.urandom(entries.SALT_LEN), 0, b"")


def bill_chunk(
    progress: BillProgress, notifications: Sequence[SentNotification]
) -> tuple[BillProgress, list[bytes]]:
    """The next items of a bill (the notifications that follow, in bill order) and the
    progress after them."""
    frontier = _frontier(progress)
    made = []
    for item in bill_items(notifications, progress.salt):
        data = item.to_bytes()
        frontier.append(merkle.leaf_hash(data))
        made.append(data)
    edge = b"".join(frontier.edge_hashes())
    return BillProgress(progress.salt, frontier.size, edge), made


def bill_entry(handle: str, month: str, progress: BillProgress, now: int) -> bytes:
    """The ``bill logged`` entry of a bill whose every item is made."""
    root = _frontier(progress).root()
    return entries.BillLogged(
        v=1, handle=handle, month=month, count=progress.count, root=root, at=now
    ).to_bytes()


def _frontier(progress: BillProgress) -> merkle.Frontier:
    edge = [progress.edge[i : i + merkle.HASH_LEN] for i in range(0, len(progress.edge), 32)]
    return merkle.Frontier.resume(
        progress.count, lambda wanted: dict(zip(wanted, edge, strict=True))
    )


def check_bill_covered(head: LogHead | None, seq: int | None) -> LogHead:
    """SPEC §8.5: a bill is served once a signed tree head covers its entry (601 before,
    as for no bill at all)."""
    if seq is None or head is None or seq >= head.size:
        raise NotFound()
    return head


def accept_head(
    newest: LogHead | None, head: LogHead, log_size: int, root_at_size: bytes | None
) -> bool:
    """Whether to store ``head``: False when a head at least as large is kept already
    (another relay process published first); :class:`InternalError` when it is not
    this log's (a root other than the store's at that size, a size beyond the log,
    a timestamp before the newest head's): storing it would break SPEC §15.3."""
    if newest is not None and head.size <= newest.size:
        return False
    if head.size > log_size:
        raise InternalError("tree head beyond the log")
    if root_at_size != head.root:
        raise InternalError("tree head root is not the log's")
    if newest is not None and head.timestamp < newest.timestamp:
        raise InternalError("tree head older than the newest")
    signed = unverified_body(TreeHead, head.signed)  # the relay signed it just now
    if (signed.size, signed.root, signed.timestamp) != (head.size, head.root, head.timestamp):
        raise InternalError("tree head fields differ from the signed ones")
    return True


def entry_time(data: bytes) -> int | None:
    """An entry's ``at`` (every entry type has one), or None for bytes that are no entry:
    what the stores index entries by (SPEC §15.6 rule 1)."""
    try:
        return int(decode_entry(data).at)  # type: ignore[attr-defined]
    except (MalformedLogEntry, ProtocolError):
        return None


LOOKUP_TAG_BYTES = 8


def lookup_tag(data: bytes) -> bytes:
    """What the stores index an entry by beside its ``at``: the first bytes of its leaf
    hash. ``at`` alone is no key: a statement's entry is dated by its ``issued_at``,
    which the signer picks, so one account could pile tens of thousands of entries on
    one ``at`` and make every LOG_INCLUSION_FETCH of it compare them all in the writer
    (found in review: 12 ms a fetch at 20,000, the writer stalled by one connection).
    Matching a tag no one can aim at leaves the entries of its time that share it:
    one, but for a 64-bit collision."""
    return merkle.leaf_hash(data)[:LOOKUP_TAG_BYTES]


def newest_bindings(entries: Iterable[tuple[int, bytes]]) -> dict[str, int]:
    """Handle → index of its newest key binding, from ``(index, entry)`` in log order:
    what ``log_bindings`` holds, rebuilt when a store first gets that table."""
    newest: dict[str, int] = {}
    for index, data in entries:
        entry = decode_entry(data)
        if isinstance(entry, KeyBinding):
            newest[entry.handle] = index
    return newest


def check_signed_size(head: LogHead | None, *sizes: int) -> None:
    """SPEC §15.6 rule 1: proofs only for trees the relay signed (601 otherwise)."""
    limit = head.size if head is not None else 0
    if any(not 0 < size <= limit for size in sizes):
        raise NotFound()
