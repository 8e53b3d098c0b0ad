"""Frame classes of protocol v1: one frozen dataclass per frame type (SPEC §2).

A frame is validated when it is constructed, whether by application code or by
the codec from untrusted bytes, so an instance that exists is a well-formed
frame. Field names are the wire keys; the wire tag is :class:`FrameType`.

Value types are deliberately few — ``int``, ``bool``, ``str``, ``bytes``,
optional values, tuples, and a few nested records — so the codec can check
every decoded value against the annotations exactly (SPEC §2.3).

Not here: encoding (:mod:`.codec`), which side may send a frame in which
state (:mod:`.connection`), and what the relay does with it (``server``).
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, fields
from enum import IntEnum, StrEnum
from typing import ClassVar

from . import limits
from .errors import ErrorCode, FrameTooLarge, MalformedFrame
from .pow import expected_solve_ms


class FrameType(IntEnum):
    """Wire tag of every frame (SPEC §2.1). Gaps leave room per section."""

    HELLO = 1
    REGISTER = 2
    LOGIN = 3
    WELCOME = 4
    ROTATE_IDENTITY = 5
    OK = 8
    ERROR = 9
    PREKEYS_UPLOAD = 10
    BUNDLE_FETCH = 11
    BUNDLE = 12
    PREKEYS_LOW = 13
    SEND = 20
    SENT = 21
    DELIVER = 22
    ACK = 23
    STATEMENT = 30
    STATEMENTS_LIST = 31
    STATEMENTS = 32
    PROFILE_PUT = 40
    PROFILE_FETCH = 41
    PROFILE = 42
    USAGE_FETCH = 43
    USAGE = 44
    BILL_FETCH = 45
    BILL = 46
    LOG_HEAD_FETCH = 50
    LOG_HEAD = 51
    LOG_CONSISTENCY_FETCH = 52
    LOG_CONSISTENCY = 53
    LOG_INCLUSION_FETCH = 54
    LOG_INCLUSION = 55
    LOG_ENTRIES_FETCH = 56
    LOG_ENTRIES = 57
    DISCOVERABLE = 58


class AccountKind(StrEnum):
    """SPEC §3.1."""

    USER = "user"
    BUSINESS = "business"


class Intent(StrEnum):
    """What a sender declares an envelope to be; drives consent and metering (SPEC §6.2)."""

    CHAT = "chat"
    NOTIFICATION = "notification"
    CONSENT_REQUEST = "consent_request"
    STATEMENT = "statement"
    """Relay-originated only: a signed statement forwarded to its target (SPEC §7.5)."""


_KINDS = frozenset(k.value for k in AccountKind)
_RELAY_INTENTS = frozenset(i.value for i in Intent)
_CLIENT_INTENTS = _RELAY_INTENTS - {Intent.STATEMENT.value}
_CATEGORIES = frozenset(limits.CATEGORIES)

MAX_REQUEST_ID = 2**32 - 1
MAX_DELIVERY_ID = 2**63 - 1
MAX_TIME_MS = 2**53 - 1
"""Times are Unix milliseconds from 0 to 2**53 − 1 inclusive (SPEC conventions):
the largest integer every JSON consumer of a vector reads exactly."""

_HANDLE_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")
"""SPEC §3.2: labels of letters and digits joined by single punctuation characters."""
_MONTH_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])\Z")  # ASCII digits: \d matches any script's
MAX_REASON_LEN = 200


# --- validators -------------------------------------------------------------
# Each raises FrameTooLarge when a str, bin or array is longer than its type's
# maximum and MalformedFrame for everything else (SPEC §2.3), the two errors the
# codec promises for untrusted input.


def check_handle(value: str, name: str = "handle") -> None:
    """SPEC §3.2: 3–32 characters of ``[a-z0-9._-]``; "it starts and ends with a letter
    or digit and never has two punctuation characters in a row" (``airline.``,
    ``air..line`` are lookalikes of ``airline``, not handles)."""
    _check_max(value, name, limits.HANDLE_MAX_LEN)
    if len(value) < limits.HANDLE_MIN_LEN:
        raise MalformedFrame(f"{name}: at least {limits.HANDLE_MIN_LEN} characters")
    if not _HANDLE_RE.match(value):
        raise MalformedFrame(f"{name}: must match [a-z0-9]+([._-][a-z0-9]+)*")


def _check_uint(value: int, name: str, maximum: int, minimum: int = 0) -> None:
    if not minimum <= value <= maximum:
        raise MalformedFrame(f"{name}: must be in {minimum}..{maximum}")


def _check_len(value: bytes, name: str, size: int) -> None:
    if len(value) != size:
        # SPEC §2.3: longer than the type's maximum is 101, shorter is 100.
        error = FrameTooLarge if len(value) > size else MalformedFrame
        raise error(f"{name}: must be exactly {size} bytes")


def _check_max(value: bytes | str | tuple[object, ...], name: str, maximum: int) -> None:
    if len(value) > maximum:
        raise FrameTooLarge(f"{name}: at most {maximum}")


def _check_size(value: bytes | str | tuple[object, ...], name: str, maximum: int) -> None:
    """From 1 to ``maximum`` bytes, characters or items."""
    if not value:
        raise MalformedFrame(f"{name}: must not be empty")
    if len(value) > maximum:
        raise FrameTooLarge(f"{name}: at most {maximum}")


def _check_month(value: str) -> None:
    """A UTC month as metering counts it (SPEC §8.4)."""
    if not _MONTH_RE.match(value):
        raise MalformedFrame("month: must be YYYY-MM")


def _check_enum(value: str, name: str, allowed: frozenset[str]) -> None:
    # Membership in a prebuilt frozenset: this runs for every frame on the hot path.
    if value not in allowed:
        raise MalformedFrame(f"{name}: must be one of {', '.join(sorted(allowed))}")


def _check_categories(value: tuple[str, ...], name: str = "categories") -> None:
    _check_size(value, name, limits.MAX_CATEGORIES)
    for item in value:
        _check_enum(item, name, _CATEGORIES)
    if len(set(value)) != len(value):
        raise MalformedFrame(f"{name}: duplicates")


# --- nested records ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedPreKeyRecord:
    """A signed prekey as published (SPEC §5.1)."""

    key_id: int
    public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_uint(self.key_id, "key_id", MAX_REQUEST_ID)
        _check_len(self.public, "public", 32)
        _check_len(self.signature, "signature", 64)


@dataclass(frozen=True, slots=True)
class OneTimePreKeyRecord:
    """A one-time prekey as published (SPEC §5.1)."""

    key_id: int
    public: bytes

    def __post_init__(self) -> None:
        _check_uint(self.key_id, "key_id", MAX_REQUEST_ID)
        _check_len(self.public, "public", 32)


@dataclass(frozen=True, slots=True)
class UsageCount:
    """Business-initiated notifications accepted in one category (SPEC §8.4)."""

    category: str
    count: int

    def __post_init__(self) -> None:
        _check_enum(self.category, "category", _CATEGORIES)
        _check_uint(self.count, "count", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class ProofOfWork:
    """The cost of the registration puzzle a relay sets in HELLO (SPEC §4.6.3).

    Bounded so that no relay can ask a client for more than
    ``POW_MAX_EXPECTED_SOLVE_MS`` of work on the reference device: a client
    refuses such a HELLO like any malformed frame.
    """

    bits: int
    opslimit: int
    memlimit: int

    def __post_init__(self) -> None:
        _check_uint(self.bits, "bits", limits.POW_MAX_BITS, minimum=1)
        _check_uint(self.opslimit, "opslimit", limits.POW_MAX_OPSLIMIT, minimum=1)
        _check_uint(
            self.memlimit, "memlimit", limits.POW_MAX_MEMLIMIT_BYTES,
            minimum=limits.POW_MIN_MEMLIMIT_BYTES,
        )  # fmt: skip
        if self.memlimit % 1024:
            raise MalformedFrame("memlimit: must be a multiple of 1024")
        if (
            expected_solve_ms(self.bits, self.opslimit, self.memlimit)
            > limits.POW_MAX_EXPECTED_SOLVE_MS
        ):
            raise MalformedFrame("pow: costs more than POW_MAX_EXPECTED_SOLVE_MS to solve")


def _check_proof(proof: tuple[bytes, ...]) -> None:
    """An RFC 9162 proof: at most ``MAX_PROOF_HASHES`` hashes of exactly 32 bytes (SPEC §15.2)."""
    _check_max(proof, "proof", limits.MAX_PROOF_HASHES)
    for item in proof:
        _check_len(item, "proof", 32)


@dataclass(frozen=True, slots=True)
class LogProof:
    """A published key binding with what proves it logged (SPEC §5.3, §15.6): the entry's
    exact bytes, its leaf index, its inclusion proof and the signed tree head it is
    proven against."""

    entry: bytes
    index: int
    proof: tuple[bytes, ...]
    sth: bytes

    def __post_init__(self) -> None:
        _check_size(self.entry, "entry", limits.MAX_LOG_ENTRY_BYTES)
        _check_uint(self.index, "index", MAX_DELIVERY_ID)
        _check_proof(self.proof)
        _check_size(self.sth, "sth", limits.MAX_TREE_HEAD_BYTES)


Record = SignedPreKeyRecord | OneTimePreKeyRecord | UsageCount | ProofOfWork | LogProof
RECORD_TYPES: tuple[type[Record], ...] = (
    SignedPreKeyRecord, OneTimePreKeyRecord, UsageCount, ProofOfWork, LogProof,
)  # fmt: skip


# --- frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Frame:
    """Base: every frame knows its tag. Not a frame itself."""

    TYPE: ClassVar[FrameType]


@dataclass(frozen=True, slots=True)
class _Request(_Frame):
    """Client→relay frame answered by exactly one response or ERROR carrying ``re = id``."""

    id: int

    def __post_init__(self) -> None:
        _check_uint(self.id, "id", MAX_REQUEST_ID, minimum=1)


@dataclass(frozen=True, slots=True)
class _Response(_Frame):
    """Relay→client answer to the request whose ``id`` it echoes in ``re``."""

    re: int

    def __post_init__(self) -> None:
        _check_uint(self.re, "re", MAX_REQUEST_ID, minimum=1)


# §4 Connection and authentication


@dataclass(frozen=True, slots=True)
class Hello(_Frame):
    """Relay's first frame: who it is and the challenge to sign (SPEC §4.1)."""

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    version: int
    relay_key: bytes
    challenge: bytes
    expires_at: int
    now: int
    pow: ProofOfWork | None = None
    """Present when REGISTER must carry a proof of work (SPEC §4.6.3)."""

    def __post_init__(self) -> None:
        _check_uint(self.version, "version", 255, minimum=1)
        _check_len(self.relay_key, "relay_key", 32)
        _check_len(self.challenge, "challenge", limits.CHALLENGE_BYTES)
        _check_uint(self.expires_at, "expires_at", MAX_TIME_MS)
        _check_uint(self.now, "now", MAX_TIME_MS)


@dataclass(frozen=True, slots=True)
class Register(_Request):
    """Create an account bound to an identity key, proving possession (SPEC §4.2)."""

    TYPE: ClassVar[FrameType] = FrameType.REGISTER
    handle: str
    kind: str
    identity_key: bytes
    signature: bytes
    pow_nonce: bytes | None = None
    """Solves HELLO's proof of work (SPEC §4.6.3)."""
    invite: bytes | None = None
    """An operator-issued invite token (SPEC §4.6.4)."""

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        check_handle(self.handle)
        _check_enum(self.kind, "kind", _KINDS)
        _check_len(self.identity_key, "identity_key", 32)
        _check_len(self.signature, "signature", 64)
        if self.pow_nonce is not None:
            _check_len(self.pow_nonce, "pow_nonce", limits.POW_NONCE_BYTES)
        if self.invite is not None:
            _check_len(self.invite, "invite", limits.INVITE_BYTES)


@dataclass(frozen=True, slots=True)
class Login(_Request):
    """Authenticate as an existing account (SPEC §4.3)."""

    TYPE: ClassVar[FrameType] = FrameType.LOGIN
    handle: str
    signature: bytes

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        check_handle(self.handle)
        _check_len(self.signature, "signature", 64)


@dataclass(frozen=True, slots=True)
class Welcome(_Response):
    """Authentication succeeded; the connection now acts as ``handle`` (SPEC §4.4)."""

    TYPE: ClassVar[FrameType] = FrameType.WELCOME
    handle: str
    kind: str
    queued: int
    one_time_prekeys: int
    has_signed_prekey: bool

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        check_handle(self.handle)
        _check_enum(self.kind, "kind", _KINDS)
        _check_uint(self.queued, "queued", MAX_DELIVERY_ID)
        _check_uint(self.one_time_prekeys, "one_time_prekeys", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class RotateIdentity(_Request):
    """Replace the account's identity key, signed by the old and the new key (SPEC §3.4)."""

    TYPE: ClassVar[FrameType] = FrameType.ROTATE_IDENTITY
    new_identity_key: bytes
    issued_at: int
    old_signature: bytes
    new_signature: bytes

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_len(self.new_identity_key, "new_identity_key", 32)
        _check_uint(self.issued_at, "issued_at", MAX_TIME_MS)
        _check_len(self.old_signature, "old_signature", 64)
        _check_len(self.new_signature, "new_signature", 64)


# §2.2 Generic responses


@dataclass(frozen=True, slots=True)
class Ok(_Response):
    """Success of a request that returns nothing else."""

    TYPE: ClassVar[FrameType] = FrameType.OK


_RETRY_CODES = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.STORE_UNAVAILABLE})
"""Codes an ERROR carries ``retry_after`` with (SPEC §9)."""


@dataclass(frozen=True, slots=True)
class Error(_Frame):
    """A refusal (SPEC §9). ``re`` is absent when no request caused it.

    ``reason`` is a short developer hint, sent only with 1xx (frame) codes; every
    other code is sent bare so that refusals cannot leak relay state.
    """

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: int
    re: int | None = None
    retry_after: int | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_uint(self.code, "code", 999, minimum=100)
        if self.re is not None:
            _check_uint(self.re, "re", MAX_REQUEST_ID, minimum=1)
        # SPEC §9: "retry_after MUST be present with 402 and 902, and only with them".
        if (self.retry_after is not None) != (self.code in _RETRY_CODES):
            raise MalformedFrame("retry_after: required with 402 and 902 and only with them")
        if self.retry_after is not None:
            _check_uint(self.retry_after, "retry_after", MAX_TIME_MS, minimum=1)
        if self.reason is not None:
            _check_size(self.reason, "reason", MAX_REASON_LEN)
            if not 100 <= self.code < 200:
                raise MalformedFrame("reason: only allowed with 1xx codes")


# §5 Prekeys


@dataclass(frozen=True, slots=True)
class PrekeysUpload(_Request):
    """Publish a signed prekey and/or a batch of one-time prekeys (SPEC §5.2)."""

    TYPE: ClassVar[FrameType] = FrameType.PREKEYS_UPLOAD
    signed_prekey: SignedPreKeyRecord | None = None
    one_time: tuple[OneTimePreKeyRecord, ...] = ()

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_max(self.one_time, "one_time", limits.MAX_PREKEYS_PER_UPLOAD)
        if self.signed_prekey is None and not self.one_time:
            raise MalformedFrame("prekeys_upload: carries no key")
        ids = [k.key_id for k in self.one_time]
        if len(set(ids)) != len(ids):
            raise MalformedFrame("one_time: duplicate key_id")


@dataclass(frozen=True, slots=True)
class BundleFetch(_Request):
    """Ask for an account's prekey bundle to start a session (SPEC §5.3)."""

    TYPE: ClassVar[FrameType] = FrameType.BUNDLE_FETCH
    handle: str

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        check_handle(self.handle)


@dataclass(frozen=True, slots=True)
class Bundle(_Response):
    """A prekey bundle; ``one_time`` was removed from the directory when served (SPEC §5.3)."""

    TYPE: ClassVar[FrameType] = FrameType.BUNDLE
    handle: str
    kind: str
    identity_key: bytes
    signed_prekey: SignedPreKeyRecord
    one_time: OneTimePreKeyRecord | None = None
    log: LogProof | None = None
    """For a published account whose binding the newest tree head covers (SPEC §15.6)."""

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        check_handle(self.handle)
        _check_enum(self.kind, "kind", _KINDS)
        _check_len(self.identity_key, "identity_key", 32)


@dataclass(frozen=True, slots=True)
class PrekeysLow(_Frame):
    """Push: the owner's one-time prekeys fell below the low-water mark (SPEC §5.4)."""

    TYPE: ClassVar[FrameType] = FrameType.PREKEYS_LOW
    remaining: int

    def __post_init__(self) -> None:
        _check_uint(self.remaining, "remaining", MAX_DELIVERY_ID)


# §6 Messaging


def _check_intent_fields(
    intent: str, category: str | None, categories: tuple[str, ...] | None, *, relay: bool
) -> None:
    _check_enum(intent, "intent", _RELAY_INTENTS if relay else _CLIENT_INTENTS)
    if intent == Intent.NOTIFICATION:
        if category is None:
            raise MalformedFrame("category: required for a notification")
        _check_enum(category, "category", _CATEGORIES)
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
class Send(_Request):
    """Hand an opaque envelope to the relay for ``to`` (SPEC §6.1)."""

    TYPE: ClassVar[FrameType] = FrameType.SEND
    to: str
    msg_id: bytes
    intent: str
    body: bytes
    category: str | None = None
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        check_handle(self.to, "to")
        _check_len(self.msg_id, "msg_id", limits.MESSAGE_ID_BYTES)
        _check_size(self.body, "body", limits.MAX_CIPHERTEXT_BYTES)
        _check_intent_fields(self.intent, self.category, self.categories, relay=False)


@dataclass(frozen=True, slots=True)
class Sent(_Response):
    """Durable acknowledgement: the envelope is committed (SPEC §6.3)."""

    TYPE: ClassVar[FrameType] = FrameType.SENT
    msg_id: bytes
    at: int

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        _check_len(self.msg_id, "msg_id", limits.MESSAGE_ID_BYTES)
        _check_uint(self.at, "at", MAX_TIME_MS)


@dataclass(frozen=True, slots=True)
class Deliver(_Frame):
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
        _check_uint(self.delivery_id, "delivery_id", MAX_DELIVERY_ID, minimum=1)
        check_handle(self.sender, "sender")
        _check_enum(self.sender_kind, "sender_kind", _KINDS)
        _check_len(self.msg_id, "msg_id", limits.MESSAGE_ID_BYTES)
        _check_uint(self.sent_at, "sent_at", MAX_TIME_MS)
        _check_size(self.body, "body", limits.MAX_CIPHERTEXT_BYTES)
        _check_intent_fields(self.intent, self.category, self.categories, relay=True)


@dataclass(frozen=True, slots=True)
class Ack(_Frame):
    """Recipient has durably processed these deliveries; relay deletes them (SPEC §6.5).

    Not a request: no response on success, so acknowledging costs no round trip.
    """

    TYPE: ClassVar[FrameType] = FrameType.ACK
    delivery_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_size(self.delivery_ids, "delivery_ids", limits.MAX_ACK_IDS)
        if min(self.delivery_ids) < 1 or max(self.delivery_ids) > MAX_DELIVERY_ID:
            raise MalformedFrame(f"delivery_ids: must be in 1..{MAX_DELIVERY_ID}")


# §7 Consent and blocking


@dataclass(frozen=True, slots=True)
class Statement(_Request):
    """A signed consent or block statement for the relay to record and forward (SPEC §7.4)."""

    TYPE: ClassVar[FrameType] = FrameType.STATEMENT
    statement: bytes

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_size(self.statement, "statement", limits.MAX_STATEMENT_BYTES)


@dataclass(frozen=True, slots=True)
class StatementsList(_Request):
    """List the statements the account signed or is the target of (SPEC §7.6)."""

    TYPE: ClassVar[FrameType] = FrameType.STATEMENTS_LIST
    after: int = 0

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_uint(self.after, "after", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class Statements(_Response):
    """One page of statements; ``next`` is the cursor for the following page."""

    TYPE: ClassVar[FrameType] = FrameType.STATEMENTS
    statements: tuple[bytes, ...]
    next: int | None = None

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        _check_max(self.statements, "statements", limits.MAX_LISTED_STATEMENTS)
        for item in self.statements:
            _check_size(item, "statements", limits.MAX_STATEMENT_BYTES)
        if self.next is not None:
            _check_uint(self.next, "next", MAX_DELIVERY_ID, minimum=1)


# §8 Business accounts


@dataclass(frozen=True, slots=True)
class ProfilePut(_Request):
    """Publish the business's signed profile (SPEC §8.2)."""

    TYPE: ClassVar[FrameType] = FrameType.PROFILE_PUT
    profile: bytes

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_size(self.profile, "profile", limits.MAX_PROFILE_BYTES)


@dataclass(frozen=True, slots=True)
class ProfileFetch(_Request):
    """Ask for a business's signed profile and badge (SPEC §8.2)."""

    TYPE: ClassVar[FrameType] = FrameType.PROFILE_FETCH
    handle: str

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        check_handle(self.handle)


@dataclass(frozen=True, slots=True)
class Profile(_Response):
    """A business's public record: key, signed profile, operator-signed badge (SPEC §8.1–8.2)."""

    TYPE: ClassVar[FrameType] = FrameType.PROFILE
    handle: str
    identity_key: bytes
    profile: bytes | None = None
    badge: bytes | None = None

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        check_handle(self.handle)
        _check_len(self.identity_key, "identity_key", 32)
        if self.profile is not None:
            _check_size(self.profile, "profile", limits.MAX_PROFILE_BYTES)
        if self.badge is not None:
            _check_size(self.badge, "badge", limits.MAX_BADGE_BYTES)


@dataclass(frozen=True, slots=True)
class UsageFetch(_Request):
    """A business asks for its own metered usage in a UTC month (SPEC §8.4)."""

    TYPE: ClassVar[FrameType] = FrameType.USAGE_FETCH
    month: str

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_month(self.month)


@dataclass(frozen=True, slots=True)
class Usage(_Response):
    """Metered counts for one month: billable notifications and free traffic."""

    TYPE: ClassVar[FrameType] = FrameType.USAGE
    month: str
    notifications: tuple[UsageCount, ...]
    service_replies: int
    user_initiated: int

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        _check_month(self.month)
        _check_max(self.notifications, "notifications", limits.MAX_CATEGORIES)
        _check_uint(self.service_replies, "service_replies", MAX_DELIVERY_ID)
        _check_uint(self.user_initiated, "user_initiated", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class BillFetch(_Request):
    """A business asks for a page of its closed bill for a UTC month (SPEC §8.5)."""

    TYPE: ClassVar[FrameType] = FrameType.BILL_FETCH
    month: str
    start: int = 0

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_month(self.month)
        _check_uint(self.start, "start", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class Bill(_Response):
    """A page of a logged bill: the bill's log entry with its inclusion proof under a
    signed tree head, the recipients' salt, and items ``start`` … (SPEC §8.5)."""

    TYPE: ClassVar[FrameType] = FrameType.BILL
    month: str
    entry: bytes
    index: int
    proof: tuple[bytes, ...]
    sth: bytes
    salt: bytes
    start: int
    items: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        _check_month(self.month)
        _check_size(self.entry, "entry", limits.MAX_LOG_ENTRY_BYTES)
        _check_uint(self.index, "index", MAX_DELIVERY_ID)
        _check_proof(self.proof)
        _check_size(self.sth, "sth", limits.MAX_TREE_HEAD_BYTES)
        _check_len(self.salt, "salt", 16)
        _check_uint(self.start, "start", MAX_DELIVERY_ID)
        _check_max(self.items, "items", limits.MAX_BILL_ITEMS)
        for item in self.items:
            _check_size(item, "items", limits.MAX_BILL_ITEM_BYTES)


# §15 Transparency log


@dataclass(frozen=True, slots=True)
class LogHeadFetch(_Request):
    """Ask for the log's newest signed tree head (SPEC §15.6); needs no account."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_HEAD_FETCH


@dataclass(frozen=True, slots=True)
class LogHead(_Response):
    """The newest signed tree head; absent while the relay has signed none."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_HEAD
    sth: bytes | None = None

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        if self.sth is not None:
            _check_size(self.sth, "sth", limits.MAX_TREE_HEAD_BYTES)


@dataclass(frozen=True, slots=True)
class LogConsistencyFetch(_Request):
    """Ask for PROOF(first, D[second]) (SPEC §15.2): that tree ``second`` extends ``first``."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_CONSISTENCY_FETCH
    first: int
    second: int

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_uint(self.first, "first", MAX_DELIVERY_ID, minimum=1)
        _check_uint(self.second, "second", MAX_DELIVERY_ID, minimum=1)


@dataclass(frozen=True, slots=True)
class LogConsistency(_Response):
    """A consistency proof, as RFC 9162 §2.1.4.1 builds it."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_CONSISTENCY
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        _check_proof(self.proof)


@dataclass(frozen=True, slots=True)
class LogInclusionFetch(_Request):
    """Ask where ``entry`` (its exact bytes) is, and PATH(index, D[size]) for it. The
    entry, not its hash: the relay finds it by the time every entry carries, an index
    that grows in order, where a hash index costs a random insert per append."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_INCLUSION_FETCH
    entry: bytes
    size: int

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_size(self.entry, "entry", limits.MAX_LOG_ENTRY_BYTES)
        _check_uint(self.size, "size", MAX_DELIVERY_ID, minimum=1)


@dataclass(frozen=True, slots=True)
class LogInclusion(_Response):
    """The first leaf holding that hash, and its inclusion proof in the tree of ``size``."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_INCLUSION
    index: int
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        _check_uint(self.index, "index", MAX_DELIVERY_ID)
        _check_proof(self.proof)


@dataclass(frozen=True, slots=True)
class LogEntriesFetch(_Request):
    """Ask for up to ``count`` entries from index ``start`` on (auditors, SPEC §15.6)."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_ENTRIES_FETCH
    start: int
    count: int

    def __post_init__(self) -> None:
        _Request.__post_init__(self)
        _check_uint(self.start, "start", MAX_DELIVERY_ID)
        _check_uint(self.count, "count", limits.MAX_LOG_ENTRIES, minimum=1)


@dataclass(frozen=True, slots=True)
class LogEntries(_Response):
    """Entries ``start`` … ``start + len(entries) − 1``, their exact bytes; fewer than asked
    at the log's end or when ``MAX_LOG_ENTRIES_BYTES`` is reached."""

    TYPE: ClassVar[FrameType] = FrameType.LOG_ENTRIES
    start: int
    entries: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _Response.__post_init__(self)
        _check_uint(self.start, "start", MAX_DELIVERY_ID)
        _check_max(self.entries, "entries", limits.MAX_LOG_ENTRIES)
        for item in self.entries:
            _check_size(item, "entries", limits.MAX_LOG_ENTRY_BYTES)


@dataclass(frozen=True, slots=True)
class Discoverable(_Request):
    """A user publishes its key binding in the log, from now on (SPEC §15.6); answered OK."""

    TYPE: ClassVar[FrameType] = FrameType.DISCOVERABLE


Frame = (
    Hello | Register | Login | Welcome | RotateIdentity | Ok | Error
    | PrekeysUpload | BundleFetch | Bundle | PrekeysLow
    | Send | Sent | Deliver | Ack
    | Statement | StatementsList | Statements
    | ProfilePut | ProfileFetch | Profile | UsageFetch | Usage | BillFetch | Bill
    | LogHeadFetch | LogHead | LogConsistencyFetch | LogConsistency
    | LogInclusionFetch | LogInclusion | LogEntriesFetch | LogEntries | Discoverable
)  # fmt: skip

FRAME_CLASSES: dict[FrameType, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Register, Login, Welcome, RotateIdentity, Ok, Error,
        PrekeysUpload, BundleFetch, Bundle, PrekeysLow,
        Send, Sent, Deliver, Ack,
        Statement, StatementsList, Statements,
        ProfilePut, ProfileFetch, Profile, UsageFetch, Usage, BillFetch, Bill,
        LogHeadFetch, LogHead, LogConsistencyFetch, LogConsistency,
        LogInclusionFetch, LogInclusion, LogEntriesFetch, LogEntries, Discoverable,
    )
}  # fmt: skip
"""Tag → class; the codec's only table."""

CLIENT_FRAMES = frozenset(
    t for t, cls in FRAME_CLASSES.items() if issubclass(cls, _Request) or cls is Ack
)
"""Tags a client may send; every other tag is relay-only (SPEC §2.1)."""

REQUEST_FRAMES = frozenset(t for t, cls in FRAME_CLASSES.items() if issubclass(cls, _Request))


def field_names(cls: type[Frame] | type[Record]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def required_field_names(cls: type[Frame] | type[Record]) -> frozenset[str]:
    """Fields a message must carry: all but those typed ``X | None`` (SPEC §2.3 rule 5).

    A default such as ``after = 0`` or ``one_time = ()`` is for building frames
    in code; on the wire such a field is still required.
    """
    hints = typing.get_type_hints(cls)
    return frozenset(
        f.name for f in fields(cls) if type(None) not in typing.get_args(hints[f.name])
    )
