"""What the transparency log holds, byte for byte (SPEC §15.1).

Every entry is ``context || 0x00 || body``: a context string naming the entry
type, a zero byte, and the canonical msgpack encoding (SPEC §2.3) of the
entry's fields, keys in the order of its table. This is the shape of every
signed message of the protocol (§14), and the contexts are distinct from all of
them, so no log entry can be mistaken for a statement, badge, profile, proof
or tree head, nor one entry type for another. The leaf hash of an entry is
RFC 9162's ``SHA-256(0x00 || entry)`` over exactly these bytes.

What is logged, and what it reveals:

- :class:`KeyBinding` — a business's identity key at registration and each
  rotation; a user's only if the user opted in to be discoverable (publishing
  it reveals that the handle exists);
- :class:`BadgeIssued` / :class:`BadgeRevoked` — the operator's badges (§8.1),
  public by nature, the badge bytes exactly as issued;
- :class:`StatementLogged` — a consent or block statement as a commitment only:
  the SHA-256 of the exact signed statement bytes. The statement carries a
  random 16-byte nonce, so the commitment cannot be matched against guessed
  statements; whoever holds the statement can show it was logged;
- :class:`BillLogged` — a business's monthly bill: the RFC 9162 root of its
  :class:`BillItem` leaves, one per metered notification, each naming its
  recipient only through a salted commitment (:func:`recipient_commitment`).

Decoding is strict (§2.3) and, unlike signed objects, also refuses a
non-canonical body: an entry has exactly one encoding, so two logs that hold
the same facts hold the same bytes.

Not here: when the relay appends (the server), hashing (:mod:`.merkle`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from blindrelay.protocol import limits
from blindrelay.protocol.codec import decode_object, encode_object
from blindrelay.protocol.errors import MalformedFrame, MalformedLogEntry, ProtocolError
from blindrelay.protocol.frames import MAX_TIME_MS, AccountKind, check_handle

from . import merkle

MAX_ENTRY_BYTES = limits.MAX_LOG_ENTRY_BYTES
"""Room for the largest entry, a badge (``MAX_BADGE_BYTES``) with its context and
fields; a bound on what an auditor's decoder accepts, not a tuning knob."""

COMMITMENT_LEN = 32
SALT_LEN = 16
"""A recipient commitment's salt: 128 random bits, so a commitment to an enumerable
handle cannot be opened by trying handles."""

RECIPIENT_CONTEXT = b"blindrelay/v1/bill/recipient"

_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])\Z")  # ASCII digits only


class LogEntry:
    """Mixin for the records a log (or a bill tree) holds. Subclasses set CONTEXT."""

    CONTEXT: ClassVar[bytes]

    def to_bytes(self) -> bytes:
        """The entry's exact bytes: ``context || 0x00 || canonical body``."""
        return self.CONTEXT + b"\x00" + encode_object(self)

    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.to_bytes())


@dataclass(frozen=True, slots=True)
class KeyBinding(LogEntry):
    """A handle's identity key from ``at`` on: a registration, or a rotation from
    ``previous_key`` (SPEC §3.4)."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/log/key"

    v: int
    handle: str
    kind: str
    identity_key: bytes
    at: int
    previous_key: bytes | None = None

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_handle(self.handle)
        if self.kind not in tuple(AccountKind):
            raise MalformedFrame("kind: must be user or business")
        _check_len(self.identity_key, "identity_key", 32)
        _check_time(self.at, "at")
        if self.previous_key is not None:
            _check_len(self.previous_key, "previous_key", 32)
            if self.previous_key == self.identity_key:
                raise MalformedFrame("previous_key: a rotation changes the key")


@dataclass(frozen=True, slots=True)
class BadgeIssued(LogEntry):
    """An operator badge (SPEC §8.1), its signed bytes exactly as issued."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/log/badge"

    v: int
    handle: str
    serial: int
    badge: bytes
    at: int

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_handle(self.handle)
        _check_serial(self.serial)
        if not 1 <= len(self.badge) <= limits.MAX_BADGE_BYTES:
            raise MalformedFrame(f"badge: 1..{limits.MAX_BADGE_BYTES} bytes")
        _check_time(self.at, "at")


@dataclass(frozen=True, slots=True)
class BadgeRevoked(LogEntry):
    """The operator withdrew badge ``serial`` of ``handle`` at ``at``."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/log/badge-revoked"

    v: int
    handle: str
    serial: int
    at: int

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_handle(self.handle)
        _check_serial(self.serial)
        _check_time(self.at, "at")


@dataclass(frozen=True, slots=True)
class StatementLogged(LogEntry):
    """A consent or block statement (SPEC §7.4) accepted at ``at``, as a commitment."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/log/statement"

    v: int
    commitment: bytes
    at: int

    def __post_init__(self) -> None:
        _check_version(self.v)
        _check_len(self.commitment, "commitment", COMMITMENT_LEN)
        _check_time(self.at, "at")


@dataclass(frozen=True, slots=True)
class BillLogged(LogEntry):
    """A business's bill for a UTC month: ``count`` items whose RFC 9162 root is ``root``."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/log/bill"

    v: int
    handle: str
    month: str
    count: int
    root: bytes
    at: int

    def __post_init__(self) -> None:
        _check_version(self.v)
        check_handle(self.handle)
        if not _MONTH.match(self.month):
            raise MalformedFrame("month: must be YYYY-MM")
        if not 0 <= self.count <= merkle.MAX_TREE_SIZE:
            raise MalformedFrame("count: out of range")
        _check_len(self.root, "root", merkle.HASH_LEN)
        _check_time(self.at, "at")


@dataclass(frozen=True, slots=True)
class BillItem(LogEntry):
    """One metered notification (SPEC §8.4): a leaf of a bill's tree, not of the log."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/bill/item"

    v: int
    msg_id: bytes
    category: str
    at: int
    recipient: bytes

    def __post_init__(self) -> None:
        _check_version(self.v)
        _check_len(self.msg_id, "msg_id", 16)
        if self.category not in limits.CATEGORIES:
            raise MalformedFrame("category: unknown")
        _check_time(self.at, "at")
        _check_len(self.recipient, "recipient", COMMITMENT_LEN)


ENTRY_TYPES: dict[bytes, type[LogEntry]] = {
    cls.CONTEXT: cls for cls in (KeyBinding, BadgeIssued, BadgeRevoked, StatementLogged, BillLogged)
}
"""Context → entry type: everything a relay's log may hold (bill items are not in it)."""


def statement_commitment(signed_statement: bytes) -> bytes:
    """SHA-256 of the exact signed statement bytes as the relay accepted them (§7.4)."""
    return hashlib.sha256(signed_statement).digest()


def recipient_commitment(recipient: str, salt: bytes) -> bytes:
    """``SHA-256(RECIPIENT_CONTEXT || 0x00 || salt || handle)``: binds a bill item to
    its recipient for whoever holds the salt (the business), and hides it from others."""
    _check_len(salt, "salt", SALT_LEN)
    check_handle(recipient, "recipient")
    return hashlib.sha256(RECIPIENT_CONTEXT + b"\x00" + salt + recipient.encode()).digest()


def bill_root(items: Sequence[BillItem]) -> bytes:
    """The RFC 9162 root over a bill's items, in the order the relay accepted them."""
    return merkle.root_of([item.leaf_hash() for item in items])


def decode_entry(data: bytes) -> LogEntry:
    """A log entry from its bytes; :class:`MalformedLogEntry` unless it is exactly one
    of the encodings above (strict §2.3 decoding, canonical body)."""
    return _decode(data, ENTRY_TYPES)


def decode_bill_item(data: bytes) -> BillItem:
    item = _decode(data, {BillItem.CONTEXT: BillItem})
    assert isinstance(item, BillItem)
    return item


def _decode(data: bytes, types: dict[bytes, type[LogEntry]]) -> LogEntry:
    if len(data) > MAX_ENTRY_BYTES:
        raise MalformedLogEntry(f"entry over {MAX_ENTRY_BYTES} bytes")
    context, zero, body = data.partition(b"\x00")
    cls = types.get(context) if zero else None
    if cls is None:
        raise MalformedLogEntry("entry: unknown context")
    try:
        entry = decode_object(cls, body, max_bytes=MAX_ENTRY_BYTES)
    except ProtocolError as exc:
        raise MalformedLogEntry(f"{cls.__name__}: {exc.detail}") from None
    if entry.to_bytes() != data:
        raise MalformedLogEntry(f"{cls.__name__}: body is not canonical")
    return entry


def _check_version(v: int) -> None:
    if v != 1:
        raise MalformedFrame("v: must be 1")


def _check_len(value: bytes, name: str, size: int) -> None:
    if len(value) != size:
        raise MalformedFrame(f"{name}: must be exactly {size} bytes")


def _check_time(value: int, name: str) -> None:
    if not 0 <= value <= MAX_TIME_MS:
        raise MalformedFrame(f"{name}: out of range")


def _check_serial(serial: int) -> None:
    if not 0 <= serial < 2**63:
        raise MalformedFrame("serial: out of range")
