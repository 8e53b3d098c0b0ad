"""Frames of messaging and of consent statements (SPEC §6–7): the intents, the
recommended ``msg_id``, SEND, SENT, DELIVER, ACK, STATEMENT, STATEMENTS_LIST and
STATEMENTS.

Why §7 is here with §6: a statement reaches its target as a DELIVER of intent
``statement`` (SPEC §7.5), so the intents, the envelope frames and the statement
frames are one family; ``server/delivery`` and ``server/statements`` handle them, and
:mod:`.fastcodec` encodes four of them by hand for the per-message path. Shared parts
are in :mod:`.frames_base`; import frames from :mod:`.frames`, which gathers every
family.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from . import limits
from .errors import MalformedFrame
from .frames_base import (
    CATEGORIES,
    KINDS,
    MAX_DELIVERY_ID,
    MAX_TIME_MS,
    BaseFrame,
    FrameType,
    Request,
    Response,
    check_enum,
    check_handle,
    check_len,
    check_max,
    check_size,
    check_uint,
)


class Intent(StrEnum):
    """What a sender declares an envelope to be; drives consent and metering (SPEC §6.2)."""

    CHAT = "chat"
    NOTIFICATION = "notification"
    CONSENT_REQUEST = "consent_request"
    STATEMENT = "statement"
    """Relay-originated only: a signed statement forwarded to its target (SPEC §7.5)."""


_RELAY_INTENTS = frozenset(i.value for i in Intent)
_CLIENT_INTENTS = _RELAY_INTENTS - {Intent.STATEMENT.value}


def _check_categories(value: tuple[str, ...], name: str = "categories") -> None:
    check_size(value, name, limits.MAX_CATEGORIES)
    for item in value:
        check_enum(item, name, CATEGORIES)
    if len(set(value)) != len(value):
        raise MalformedFrame(f"{name}: duplicates")


# §6 Messaging


def _check_intent_fields(
    intent: str, category: str | None, categories: tuple[str, ...] | None, *, relay: bool
) -> None:
    check_enum(intent, "intent", _RELAY_INTENTS if relay else _CLIENT_INTENTS)
    if intent == Intent.NOTIFICATION:
        if category is None:
            raise MalformedFrame("category: required for a notification")
        check_enum(category, "category", CATEGORIES)
    elif category is not None:
        raise MalformedFrame("category: only for a notification")
    if intent == Intent.CONSENT_REQUEST:
        if categories is None:
            raise MalformedFrame("categories: required for a consent request")
        _check_categories(categories)
    elif categories is not None:
        raise MalformedFrame("categories: only for a consent request")


def check_send_labels(
    intent: str, category: str | None, categories: tuple[str, ...] | None
) -> None:
    """A SEND's intent with its category or categories (SPEC §6.1): the frame's rule, for
    the content that repeats them inside the ciphertext (SPEC §13.11) too."""
    _check_intent_fields(intent, category, categories, relay=False)


MESSAGE_ID_RANDOM_BYTES = limits.MESSAGE_ID_BYTES - limits.MESSAGE_ID_CLOCK_BYTES


def message_id(now_ms: int, random: bytes) -> bytes:
    """The recommended ``msg_id`` (SPEC §6.1.1): the clock first, then the random bits.

    Why the clock first: a relay remembers every id for ``QUEUE_TTL_MS`` in an ordered
    index; ids that grow with time are added at its end, where a batch of SENDs shares
    a page, instead of a page each at random places (issue 19). Nothing relies on it:
    the relay neither reads nor checks the clock part, and uniqueness comes from the
    random part (80 bits per sender and millisecond).
    """
    if not 0 <= now_ms < 1 << (8 * limits.MESSAGE_ID_CLOCK_BYTES):
        raise ValueError(f"now_ms out of range: {now_ms}")
    if len(random) != MESSAGE_ID_RANDOM_BYTES:
        raise ValueError(f"random: {len(random)} bytes, not {MESSAGE_ID_RANDOM_BYTES}")
    return now_ms.to_bytes(limits.MESSAGE_ID_CLOCK_BYTES, "big") + random


@dataclass(frozen=True, slots=True)
class Send(Request):
    """Hand an opaque envelope to the relay for ``to`` (SPEC §6.1)."""

    TYPE: ClassVar[FrameType] = FrameType.SEND
    to: str
    msg_id: bytes
    intent: str
    body: bytes
    category: str | None = None
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_handle(self.to, "to")
        check_len(self.msg_id, "msg_id", limits.MESSAGE_ID_BYTES)
        check_size(self.body, "body", limits.MAX_CIPHERTEXT_BYTES)
        _check_intent_fields(self.intent, self.category, self.categories, relay=False)


@dataclass(frozen=True, slots=True)
class Sent(Response):
    """Durable acknowledgement: the envelope is committed (SPEC §6.3)."""

    TYPE: ClassVar[FrameType] = FrameType.SENT
    msg_id: bytes
    at: int

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        check_len(self.msg_id, "msg_id", limits.MESSAGE_ID_BYTES)
        check_uint(self.at, "at", MAX_TIME_MS)


@dataclass(frozen=True, slots=True)
class Deliver(BaseFrame):
    """Push: an envelope for the connected account (SPEC §6.4)."""

    TYPE: ClassVar[FrameType] = FrameType.DELIVER
    delivery_id: int
    sender: str
    sender_kind: str
    msg_id: bytes
    intent: str
    sent_at: int
    body: bytes
    category: str | None = None
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_uint(self.delivery_id, "delivery_id", MAX_DELIVERY_ID, minimum=1)
        check_handle(self.sender, "sender")
        check_enum(self.sender_kind, "sender_kind", KINDS)
        check_len(self.msg_id, "msg_id", limits.MESSAGE_ID_BYTES)
        check_uint(self.sent_at, "sent_at", MAX_TIME_MS)
        check_size(self.body, "body", limits.MAX_CIPHERTEXT_BYTES)
        _check_intent_fields(self.intent, self.category, self.categories, relay=True)


@dataclass(frozen=True, slots=True)
class Ack(BaseFrame):
    """Recipient has durably processed these deliveries; relay deletes them (SPEC §6.5).

    Not a request: no response on success, so acknowledging costs no round trip.
    """

    TYPE: ClassVar[FrameType] = FrameType.ACK
    delivery_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        check_size(self.delivery_ids, "delivery_ids", limits.MAX_ACK_IDS)
        if min(self.delivery_ids) < 1 or max(self.delivery_ids) > MAX_DELIVERY_ID:
            raise MalformedFrame(f"delivery_ids: must be in 1..{MAX_DELIVERY_ID}")


# §7 Consent and blocking


@dataclass(frozen=True, slots=True)
class Statement(Request):
    """A signed consent or block statement for the relay to record and forward (SPEC §7.4)."""

    TYPE: ClassVar[FrameType] = FrameType.STATEMENT
    statement: bytes

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_size(self.statement, "statement", limits.MAX_STATEMENT_BYTES)


@dataclass(frozen=True, slots=True)
class StatementsList(Request):
    """List the statements the account signed or is the target of (SPEC §7.6)."""

    TYPE: ClassVar[FrameType] = FrameType.STATEMENTS_LIST
    after: int = 0

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_uint(self.after, "after", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class Statements(Response):
    """One page of statements; ``next`` is the cursor for the following page."""

    TYPE: ClassVar[FrameType] = FrameType.STATEMENTS
    statements: tuple[bytes, ...]
    next: int | None = None

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        check_max(self.statements, "statements", limits.MAX_LISTED_STATEMENTS)
        for item in self.statements:
            check_size(item, "statements", limits.MAX_STATEMENT_BYTES)
        if self.next is not None:
            check_uint(self.next, "next", MAX_DELIVERY_ID, minimum=1)
