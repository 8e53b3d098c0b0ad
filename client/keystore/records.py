"""The records a key store keeps, the errors it raises, and the checks both stores share.

Every record is a frozen class validated at construction, so a malformed value
is refused where it is made, before either store writes anything. What it is
not: storage (``memory``, ``sqlite``) or a decision over several records
(``keys``, ``conversations``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from blindrelay.protocol.errors import BlindrelayError

MAX_PROCESSED_IDS = 20_000
"""Processed envelope ids remembered for dedup; the oldest are pruned beyond it.
The relay only redelivers unacknowledged envelopes, of which it holds at most
its queue cap (10,000 by default), so twice that covers a full redelivered
queue at ~50 bytes a row (~1 MB). A sender's resend after a relay crash between an
early DELIVER and its commit (SPEC §6.4.5) is not bounded so: it is dropped only if
it comes back within this many other messages (docs/sdk.md, "Delivered before SENT")."""

MAX_PREKEY_ID = 2**32 - 1
"""Key ids are u32 on the wire (SPEC §5.1); the store never hands one out twice."""

IDENTITY_KEY_BYTES = 32
IDENTITY_SEED_BYTES = 32

AccountKind = Literal["user", "business"]
_ACCOUNT_KINDS: frozenset[str] = frozenset({"user", "business"})


# --- Errors ----------------------------------------------------------------


class KeyStoreError(BlindrelayError):
    """A key store cannot be opened or read as it should."""


class WrongPassphrase(KeyStoreError):
    """The passphrase does not unlock this store (or its header was altered)."""


class KeyStoreCorrupted(KeyStoreError):
    """A record or the header fails authentication or is not a key store."""


class KeyStoreInUse(KeyStoreError):
    """Another process (or another open store object) holds this key store file."""


class KeyStoreTooNew(KeyStoreError):
    """The file was written by a newer blindrelay, whose tables this one cannot read.

    Opening it anyway would misread or overwrite records it does not know;
    the person upgrades blindrelay instead.
    """

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"this profile has schema version {found}, newer than the {supported} this "
            "blindrelay reads: upgrade blindrelay to open it"
        )
        self.found = found
        self.supported = supported


# --- Checks ----------------------------------------------------------------


def require_bytes(name: str, value: object, length: int | None = None) -> None:
    if not isinstance(value, bytes) or not value:
        raise TypeError(f"{name} must be non-empty bytes")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")


def require_handle(handle: object, name: str = "handle") -> None:
    if not isinstance(handle, str) or not handle:
        raise TypeError(f"{name} must be a non-empty str")


def require_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int")


def require_key_id(key_id: object) -> None:
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 0 < key_id <= MAX_PREKEY_ID:
        raise ValueError(f"key id must be an int in 1..{MAX_PREKEY_ID}")


# --- Our account and keys ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class OurIdentity:
    """Our account: who we are, where our relay is, and our identity key pair."""

    handle: str
    account_kind: AccountKind
    relay_url: str
    identity_seed: bytes = field(repr=False)
    """Ed25519 private seed (RFC 8032), 32 bytes; hidden from repr so logs never show it."""
    identity_public: bytes

    def __post_init__(self) -> None:
        require_handle(self.handle)
        if self.account_kind not in _ACCOUNT_KINDS:
            raise ValueError("account_kind must be 'user' or 'business'")
        if not isinstance(self.relay_url, str):
            raise TypeError("relay_url must be a str")
        require_bytes("identity_seed", self.identity_seed, IDENTITY_SEED_BYTES)
        require_bytes("identity_public", self.identity_public, IDENTITY_KEY_BYTES)


@dataclass(frozen=True, slots=True)
class SignedPreKeyRecord:
    """One of our signed prekeys, kept until it has been rotated out."""

    key_id: int
    private_key: bytes = field(repr=False)
    public_key: bytes
    signature: bytes
    created_at_ms: int

    def __post_init__(self) -> None:
        require_key_id(self.key_id)
        require_bytes("private_key", self.private_key)
        require_bytes("public_key", self.public_key)
        require_bytes("signature", self.signature)
        require_count("created_at_ms", self.created_at_ms)


@dataclass(frozen=True, slots=True)
class OneTimePreKeyRecord:
    """One of our one-time prekeys; its private key is destroyed on first use."""

    key_id: int
    private_key: bytes = field(repr=False)
    public_key: bytes

    def __post_init__(self) -> None:
        require_key_id(self.key_id)
        require_bytes("private_key", self.private_key)
        require_bytes("public_key", self.public_key)


class IdentityStatus(Enum):
    """How a presented identity key relates to what we trust for that handle."""

    NEW = "new"  # no key recorded for the handle yet
    TRUSTED = "trusted"  # the recorded key
    CHANGED = "changed"  # another key than the recorded one: never accept silently


@dataclass(frozen=True, slots=True)
class TrustedIdentity:
    """A contact's identity key as we trust it."""

    handle: str
    identity_key: bytes
    first_seen_ms: int
    verified: bool
    """True once the user compared safety numbers (SPEC §13.9) for this very key."""

    def __post_init__(self) -> None:
        require_handle(self.handle)
        require_bytes("identity_key", self.identity_key, IDENTITY_KEY_BYTES)
        require_count("first_seen_ms", self.first_seen_ms)


@dataclass(frozen=True, slots=True)
class SkippedKeyHolder:
    """A session that holds skipped message keys (SPEC §13.4): the client's budget across
    sessions drops the keys of a stranger's first, of the one that gained some least
    recently first; a contact's only when no stranger's session holds any."""

    handle: str
    count: int
    """How many skipped keys its stored session holds (at most the ratchet's cap)."""
    gained_at_ms: int
    """Our clock when the session last stored a skipped key it did not hold before."""

    def __post_init__(self) -> None:
        require_handle(self.handle)
        require_count("count", self.count)
        require_count("gained_at_ms", self.gained_at_ms)


def classify_identity(trusted_key: bytes | None, identity_key: bytes) -> IdentityStatus:
    """The TOFU decision: a presented key against the one trusted for its handle, if any."""
    if trusted_key is None:
        return IdentityStatus.NEW
    if trusted_key == identity_key:
        return IdentityStatus.TRUSTED
    return IdentityStatus.CHANGED


# --- Messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A decrypted message waiting for the app; ``body`` is the SDK's encoding."""

    msg_id: bytes
    sender: str
    received_at_ms: int
    body: bytes = field(repr=False)

    def __post_init__(self) -> None:
        require_bytes("msg_id", self.msg_id)
        require_handle(self.sender)
        require_count("received_at_ms", self.received_at_ms)
        if not isinstance(self.body, bytes):
            raise TypeError("body must be bytes")


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An envelope we encrypted and have not seen the relay commit (SENT, SPEC §6.3).

    Kept until SENT so that a restart resends it with the same msg_id, which
    the relay recognises; resent in ``position`` order, the order they were made.
    """

    position: int
    """When it was queued (ns), strictly increasing within a profile."""
    msg_id: bytes
    to: str
    envelope: bytes = field(repr=False)
    intent: str
    category: str | None = None
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        require_count("position", self.position)
        require_bytes("msg_id", self.msg_id)
        require_handle(self.to, "to")
        require_bytes("envelope", self.envelope)
        require_handle(self.intent, "intent")
        if self.category is not None and not isinstance(self.category, str):
            raise TypeError("category must be a str or None")
        if self.categories is not None and (
            not isinstance(self.categories, tuple)
            or not all(isinstance(c, str) for c in self.categories)
        ):
            raise TypeError("categories must be a tuple of str or None")


@dataclass(frozen=True, slots=True)
class HeldCounts:
    """A sender's messages waiting for the user's decision on its new identity key."""

    held: int
    """Kept, in order, until the key is approved (or the sender blocked)."""
    dropped: int
    """Refused beyond the SDK's per-sender bound: gone; the sender must resend them."""

    def __post_init__(self) -> None:
        require_count("held", self.held)
        require_count("dropped", self.dropped)


# --- The relay's log -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeardHead:
    """A contact's signed tree head not proven consistent with ours yet (SPEC §15.6 rule
    5): kept until the relay proves it or it shows a fork, one per contact."""

    contact: str
    signed: bytes
    heard_at_ms: int
    """Our clock when the contact's first head still unchecked arrived: a newer head
    from the contact takes its place but not its age."""
    refusals: int = 0
    """Tries that got no proof (a refusal, a drop, no answer)."""

    def __post_init__(self) -> None:
        require_handle(self.contact, "contact")
        require_bytes("signed", self.signed)
        require_count("heard_at_ms", self.heard_at_ms)
        require_count("refusals", self.refusals)


@dataclass(frozen=True, slots=True)
class LogFork:
    """The split-view alarm's evidence (SPEC §15.6 rule 5): two signed tree heads of the
    relay's log that cannot both be true. Kept for good, one per relay key (the key that
    signed both), so that a restart raises the alarm again."""

    relay_key: bytes
    first: bytes
    second: bytes
    detail: str
    """Why they cannot both be true (``LogForked.detail``)."""

    def __post_init__(self) -> None:
        require_bytes("relay_key", self.relay_key, IDENTITY_KEY_BYTES)
        require_bytes("first", self.first)
        require_bytes("second", self.second)
        if not isinstance(self.detail, str):
            raise TypeError("detail must be a str")
