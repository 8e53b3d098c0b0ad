"""Client key custody: every secret and every piece of durable state a client holds.

A :class:`KeyStore` holds our identity (Ed25519 seed) and profile settings, our
signed and one-time prekeys, the opaque session state per contact, the contacts'
identity keys we trust (TOFU), the ids of envelopes already processed, the inbox
of decrypted messages the app has not consumed yet, small SDK state, and SDK
logs (ordered, append-only lists of records per group: kept statements, held
messages), where adding a record costs the same however many the group holds.
:class:`MemoryKeyStore` serves tests and throwaway clients; :class:`SqliteKeyStore`
is the durable one, encrypted at rest.

What it is not: it performs no cryptographic construction (that is
:mod:`blindrelay.protocol.crypto`) and understands no session — sessions are
opaque bytes. It does no networking and decides nothing about delivery.

Invariants both implementations keep:

- A contact's identity key is never replaced silently (SPEC §3.3, §13.8): a
  different key reads as ``CHANGED`` and only :meth:`KeyStore.approve_identity`
  (an explicit user action) replaces it.
- An identity key is pinned for at most one handle (SPEC §13.8): pinning or
  approving a key that another handle holds raises :class:`IdentityKeyReused`.
  :meth:`KeyStore.identity_owner` answers from an index by key, written with
  the trust record it mirrors; the trust record stays the truth.
- A one-time prekey is gone once taken (X3DH forward secrecy needs its private
  key destroyed after first use); the SQLite store also zeroes the freed pages.
- :meth:`KeyStore.commit_incoming` writes the new session state, the processed
  message id and the decrypted message in one transaction, so the SDK can ack a
  delivery as soon as it returns: a crash before it means the relay redelivers,
  a crash after it means nothing is lost, and a redelivery of an already
  committed envelope is recognised by ``(sender, msg_id)`` instead of failing
  to decrypt (SPEC §6.4.3: ids are chosen by senders, so only the pair is unique).
- :meth:`KeyStore.atomic` groups several writes into one all-or-nothing unit
  (the SDK stores an advanced sending chain and the outbox entry holding its
  envelope together, so a crash cannot keep one without the other).

At rest (:class:`SqliteKeyStore`)::

    passphrase ──Argon2id(salt, opslimit, memlimit)──▶ KEK (32 B)
    master key (32 random B), stored as XChaCha20-Poly1305(KEK, AD = header fields)
    record key = BLAKE2b(key=master, person="br.ks.record")
    lookup key = BLAKE2b(key=master, person="br.ks.lookup")
    row key  k = BLAKE2b-256(key=lookup key, table ‖ 0x00 ‖ natural key)
    row AD     = "blindrelay.keystore.v1" ‖ 0x00 ‖ table ‖ 0x00 ‖ k
    row value  = nonce(24) ‖ XChaCha20-Poly1305(record key, nonce, msgpack(fields), row AD)
    log row    g = BLAKE2b-256(key=lookup key, "logs" ‖ 0x00 ‖ group), seq = u64 position,
               AD = "blindrelay.keystore.v1" ‖ 0x00 ‖ "logs" ‖ 0x00 ‖ g ‖ seq (big-endian)

Unwrapping the master key is the passphrase verifier (a wrong passphrase fails
its tag → :class:`WrongPassphrase`), and changing the passphrase rewraps that one
key instead of every record. Handles, message ids, state keys and contacts'
identity keys (the ``key_owners`` index) appear on disk only as keyed
hashes; the AD binds each sealed value to its table and row, so
rows cannot be swapped or moved between tables undetected. What the file still
shows: the number and size of rows per table (how many contacts, prekeys and
pending messages), which log rows belong to one group (not whose) and, in the
WAL, when they were written.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import unicodedata
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

import msgpack
import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.pwhash.argon2id as argon2id
import nacl.utils
import sqlite_utils

from blindrelay.protocol.crypto.libsodium import (
    SodiumError,
    xchacha20poly1305_decrypt,
    xchacha20poly1305_encrypt,
)
from blindrelay.protocol.errors import BlindrelayError, IdentityKeyReused, UntrustedIdentity

# --- Limits and costs ------------------------------------------------------

MAX_PROCESSED_IDS = 20_000
"""Processed envelope ids remembered for dedup; the oldest are pruned beyond it.
The relay only redelivers unacknowledged envelopes, of which it holds at most
its queue cap (10,000 by default), so twice that covers a full redelivered
queue at ~50 bytes a row (~1 MB)."""

DEFAULT_OPSLIMIT = argon2id.OPSLIMIT_MODERATE
DEFAULT_MEMLIMIT = argon2id.MEMLIMIT_MODERATE
"""Argon2id cost for new stores: libsodium's MODERATE (3 passes, 256 MiB,
~0.6 s here). The file guards long-term identity keys against offline guessing
once a device or backup is stolen, and it is unlocked once per start, where
half a second is acceptable; INTERACTIVE (64 MiB, ~0.07 s) makes each guess 8×
cheaper and is meant for online logins. Memory-poor devices pass lower costs;
the costs used are stored in the header, so any store opens anywhere."""

MAX_ACCEPTED_MEMLIMIT = argon2id.MEMLIMIT_SENSITIVE
"""Largest Argon2 memory cost an existing header may ask for (1 GiB); a planted
header must not make opening the file exhaust memory."""

RECORD_CACHE_SIZE = 65_536
"""Rows :class:`SqliteKeyStore` keeps decrypted in memory, written through and
dropped whenever a transaction rolls back. A bulk send reads a contact's
session, trusted key and pending-change entry per message (~33 µs of SQLite and
decryption); one process owns a store, so what it wrote is what the file holds.
A business's whole customer base fits (three rows each)."""

MAX_PREKEY_ID = 2**32 - 1
"""Key ids are u32 on the wire (SPEC §5.1); the store never hands one out twice."""

IDENTITY_KEY_BYTES = 32
IDENTITY_SEED_BYTES = 32
FORMAT_VERSION = 1

AccountKind = Literal["user", "business"]
_ACCOUNT_KINDS: frozenset[str] = frozenset({"user", "business"})
_ABSENT = object()
"""Undo-journal marker: the key had no value before the write."""


# --- Errors ----------------------------------------------------------------


class KeyStoreError(BlindrelayError):
    """A key store cannot be opened or read as it should."""


class WrongPassphrase(KeyStoreError):
    """The passphrase does not unlock this store (or its header was altered)."""


class KeyStoreCorrupted(KeyStoreError):
    """A record or the header fails authentication or is not a key store."""


class KeyStoreInUse(KeyStoreError):
    """Another process (or another open store object) holds this key store file."""


# --- Records ---------------------------------------------------------------


def _require_bytes(name: str, value: object, length: int | None = None) -> None:
    if not isinstance(value, bytes) or not value:
        raise TypeError(f"{name} must be non-empty bytes")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")


def _require_handle(handle: object) -> None:
    if not isinstance(handle, str) or not handle:
        raise TypeError("handle must be a non-empty str")


def _require_state_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise TypeError("state key must be a non-empty str")


def _require_key_id(key_id: object) -> None:
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 0 < key_id <= MAX_PREKEY_ID:
        raise ValueError(f"key id must be an int in 1..{MAX_PREKEY_ID}")


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
        _require_handle(self.handle)
        if self.account_kind not in _ACCOUNT_KINDS:
            raise ValueError("account_kind must be 'user' or 'business'")
        if not isinstance(self.relay_url, str):
            raise TypeError("relay_url must be a str")
        _require_bytes("identity_seed", self.identity_seed, IDENTITY_SEED_BYTES)
        _require_bytes("identity_public", self.identity_public, IDENTITY_KEY_BYTES)


@dataclass(frozen=True, slots=True)
class SignedPreKeyRecord:
    """One of our signed prekeys, kept until it has been rotated out."""

    key_id: int
    private_key: bytes = field(repr=False)
    public_key: bytes
    signature: bytes
    created_at_ms: int

    def __post_init__(self) -> None:
        _require_key_id(self.key_id)
        _require_bytes("private_key", self.private_key)
        _require_bytes("public_key", self.public_key)
        _require_bytes("signature", self.signature)
        if not isinstance(self.created_at_ms, int) or self.created_at_ms < 0:
            raise ValueError("created_at_ms must be a non-negative int")


@dataclass(frozen=True, slots=True)
class OneTimePreKeyRecord:
    """One of our one-time prekeys; its private key is destroyed on first use."""

    key_id: int
    private_key: bytes = field(repr=False)
    public_key: bytes

    def __post_init__(self) -> None:
        _require_key_id(self.key_id)
        _require_bytes("private_key", self.private_key)
        _require_bytes("public_key", self.public_key)


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
        _require_handle(self.handle)
        _require_bytes("identity_key", self.identity_key, IDENTITY_KEY_BYTES)
        if not isinstance(self.first_seen_ms, int) or self.first_seen_ms < 0:
            raise ValueError("first_seen_ms must be a non-negative int")


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A decrypted message waiting for the app; ``body`` is the SDK's encoding."""

    msg_id: bytes
    sender: str
    received_at_ms: int
    body: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _require_bytes("msg_id", self.msg_id)
        _require_handle(self.sender)
        if not isinstance(self.received_at_ms, int) or self.received_at_ms < 0:
            raise ValueError("received_at_ms must be a non-negative int")
        if not isinstance(self.body, bytes):
            raise TypeError("body must be bytes")


def classify_identity(stored: TrustedIdentity | None, identity_key: bytes) -> IdentityStatus:
    """The TOFU decision, shared by every implementation."""
    if stored is None:
        return IdentityStatus.NEW
    if stored.identity_key == identity_key:
        return IdentityStatus.TRUSTED
    return IdentityStatus.CHANGED


# --- The interface ---------------------------------------------------------


@runtime_checkable
class KeyStore(Protocol):
    """Everything the SDK persists. Implementations behave identically."""

    # Our account
    def get_identity(self) -> OurIdentity | None: ...
    def set_identity(self, identity: OurIdentity) -> None: ...

    # Signed prekeys
    def store_signed_prekey(self, record: SignedPreKeyRecord) -> None: ...
    def load_signed_prekey(self, key_id: int) -> SignedPreKeyRecord | None: ...
    def signed_prekeys(self) -> list[SignedPreKeyRecord]: ...
    def remove_signed_prekey(self, key_id: int) -> None: ...
    def set_current_signed_prekey(self, key_id: int) -> None: ...
    def current_signed_prekey(self) -> SignedPreKeyRecord | None: ...

    # One-time prekeys
    def allocate_prekey_ids(self, count: int) -> range: ...
    def store_one_time_prekeys(self, records: Iterable[OneTimePreKeyRecord]) -> None: ...
    def take_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None: ...
    def load_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None: ...
    def one_time_prekey_ids(self) -> list[int]: ...

    # Sessions
    def load_session(self, handle: str) -> bytes | None: ...
    def store_session(self, handle: str, blob: bytes) -> None: ...
    def delete_session(self, handle: str) -> None: ...

    # Trusted identities (TOFU)
    def get_trusted_identity(self, handle: str) -> TrustedIdentity | None: ...
    def check_identity(self, handle: str, identity_key: bytes) -> IdentityStatus: ...
    def trust_identity(self, handle: str, identity_key: bytes, now_ms: int) -> IdentityStatus: ...
    def identity_owner(self, identity_key: bytes) -> str | None: ...
    def require_trusted(self, handle: str, identity_key: bytes) -> None: ...
    def approve_identity(
        self, handle: str, identity_key: bytes, now_ms: int, *, verified: bool = False
    ) -> None: ...

    # Incoming messages, identified by (sender, msg_id) (SPEC §6.4.3)
    def is_processed(self, sender: str, msg_id: bytes) -> bool: ...
    def mark_processed(self, sender: str, msg_id: bytes) -> None: ...
    def commit_incoming(
        self,
        message: IncomingMessage,
        session_blob: bytes,
        *,
        used_one_time_prekey: int | None = None,
    ) -> bool: ...
    def pending_messages(self) -> list[IncomingMessage]: ...
    def consume(self, sender: str, msg_id: bytes) -> bool: ...

    # SDK state
    def get_state(self, key: str) -> bytes | None: ...
    def set_state(self, key: str, value: bytes) -> None: ...
    def delete_state(self, key: str) -> None: ...
    def state_items(self, prefix: str) -> list[tuple[str, bytes]]: ...

    # SDK logs: per group, records in the order they were appended
    def append_log(self, group: str, value: bytes) -> None: ...
    def read_log(self, group: str, start: int = 0) -> list[bytes]: ...
    def delete_log(self, group: str, count: int | None = None) -> None: ...

    # Grouping: every write inside the block lands, or none does (nests)
    def atomic(self) -> AbstractContextManager[object]: ...

    def close(self) -> None: ...


# --- Behaviour shared by both implementations --------------------------------


class _KeyStoreBase(ABC):
    """Decisions (TOFU, id allocation, commit order) written once over storage primitives.

    Subclasses provide the primitives and ``_transaction``; this class never
    touches storage directly, so both implementations decide identically.
    """

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[object]: ...

    @abstractmethod
    def _load_trust(self, handle: str) -> TrustedIdentity | None: ...

    @abstractmethod
    def _store_trust(self, record: TrustedIdentity) -> None: ...

    @abstractmethod
    def _load_owner(self, identity_key: bytes) -> str | None: ...

    @abstractmethod
    def _store_owner(self, identity_key: bytes, handle: str) -> None: ...

    @abstractmethod
    def _delete_owner(self, identity_key: bytes) -> None: ...

    @abstractmethod
    def _get_counter(self, name: str) -> int | None: ...

    @abstractmethod
    def _set_counter(self, name: str, value: int) -> None: ...

    @abstractmethod
    def _add_processed(self, sender: str, msg_id: bytes) -> None: ...

    @abstractmethod
    def _add_pending(self, message: IncomingMessage) -> None: ...

    @abstractmethod
    def is_processed(self, sender: str, msg_id: bytes) -> bool: ...

    @abstractmethod
    def store_session(self, handle: str, blob: bytes) -> None: ...

    @abstractmethod
    def load_signed_prekey(self, key_id: int) -> SignedPreKeyRecord | None: ...

    @abstractmethod
    def take_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None: ...

    # Trust

    def get_trusted_identity(self, handle: str) -> TrustedIdentity | None:
        """The key we trust for ``handle``, with when and how we came to trust it."""
        _require_handle(handle)
        return self._load_trust(handle)

    def check_identity(self, handle: str, identity_key: bytes) -> IdentityStatus:
        """Classify a presented key without changing anything."""
        _require_handle(handle)
        _require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        return classify_identity(self._load_trust(handle), identity_key)

    def identity_owner(self, identity_key: bytes) -> str | None:
        """The handle ``identity_key`` is pinned for, or None (SPEC §13.8: at most one).

        The index is a lookup aid: an entry counts only while that handle's
        trust record still holds this key.
        """
        _require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        handle = self._load_owner(identity_key)
        if handle is None:
            return None
        trusted = self._load_trust(handle)
        return handle if trusted is not None and trusted.identity_key == identity_key else None

    def _pin(self, record: TrustedIdentity) -> None:
        """Store a trust record and its index entry; refuse a key another handle holds.

        SPEC §13.8: "a key already pinned for another handle MUST be refused".
        """
        owner = self.identity_owner(record.identity_key)
        if owner is not None and owner != record.handle:
            raise IdentityKeyReused(record.handle, owner)
        previous = self._load_trust(record.handle)
        if previous is not None and previous.identity_key != record.identity_key:
            self._delete_owner(previous.identity_key)  # replaced: the old key is free
        self._store_trust(record)
        if owner is None:
            self._store_owner(record.identity_key, record.handle)

    def trust_identity(self, handle: str, identity_key: bytes, now_ms: int) -> IdentityStatus:
        """Trust on first use; returns the status found (``NEW`` = just recorded).

        Raises :class:`IdentityKeyReused` for a key pinned for another handle and
        :class:`UntrustedIdentity` on a changed key rather than overwrite it.
        """
        _require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        with self._transaction():
            owner = self.identity_owner(identity_key)
            if owner is not None and owner != handle:
                raise IdentityKeyReused(handle, owner)
            status = self.check_identity(handle, identity_key)
            if status is IdentityStatus.CHANGED:
                raise UntrustedIdentity(handle)
            if status is IdentityStatus.NEW:
                self._pin(TrustedIdentity(handle, identity_key, now_ms, verified=False))
            return status

    def require_trusted(self, handle: str, identity_key: bytes) -> None:
        """Gate before every send and on every decrypt: the key must be the trusted one.

        SPEC §3.3: "they pin the key on first use (trust on first use) and MUST
        surface a change of a contact's identity key to the person before the next
        message is sent to that contact". Raising here is how it surfaces.
        """
        status = self.check_identity(handle, identity_key)
        if status is IdentityStatus.NEW:
            raise UntrustedIdentity(handle, f"identity key of {handle!r} not yet trusted")
        if status is IdentityStatus.CHANGED:
            raise UntrustedIdentity(handle)

    def approve_identity(
        self, handle: str, identity_key: bytes, now_ms: int, *, verified: bool = False
    ) -> None:
        """The user's explicit decision to trust ``identity_key`` for ``handle``.

        Replaces a changed key (first-seen restarts at ``now_ms`` and verification
        must be redone); on the trusted key it keeps first-seen and only ever
        raises ``verified`` (the user compared safety numbers). A key pinned for
        another handle raises :class:`IdentityKeyReused` (SPEC §13.8).
        """
        _require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        with self._transaction():
            stored = self.get_trusted_identity(handle)
            if stored is not None and stored.identity_key == identity_key:
                record = TrustedIdentity(
                    handle, identity_key, stored.first_seen_ms, stored.verified or verified
                )
            else:
                record = TrustedIdentity(handle, identity_key, now_ms, verified)
            self._pin(record)

    # Prekey bookkeeping

    def allocate_prekey_ids(self, count: int) -> range:
        """Reserve ``count`` fresh prekey ids; ids are never handed out twice."""
        if not isinstance(count, int) or count < 1:
            raise ValueError("count must be a positive int")
        with self._transaction():
            first = self._get_counter("next_prekey_id") or 1
            if first + count - 1 > MAX_PREKEY_ID:
                raise OverflowError("prekey id space exhausted")
            self._set_counter("next_prekey_id", first + count)
        return range(first, first + count)

    def set_current_signed_prekey(self, key_id: int) -> None:
        """Mark which stored signed prekey the relay is advertising."""
        with self._transaction():
            if self.load_signed_prekey(key_id) is None:
                raise KeyError(f"no signed prekey {key_id}")
            self._set_counter("current_signed_prekey", key_id)

    def current_signed_prekey(self) -> SignedPreKeyRecord | None:
        """The advertised signed prekey, if one is set and still stored."""
        key_id = self._get_counter("current_signed_prekey")
        return None if key_id is None else self.load_signed_prekey(key_id)

    # Incoming

    def mark_processed(self, sender: str, msg_id: bytes) -> None:
        """Remember a sender's envelope id (idempotent); the oldest beyond the cap are forgotten."""
        _require_handle(sender)
        _require_bytes("msg_id", msg_id)
        with self._transaction():
            if not self.is_processed(sender, msg_id):
                self._add_processed(sender, msg_id)

    def commit_incoming(
        self,
        message: IncomingMessage,
        session_blob: bytes,
        *,
        used_one_time_prekey: int | None = None,
    ) -> bool:
        """Persist a decrypted message, its sender's new session and its id, atomically.

        Returns False, changing nothing, if the id was already processed (a
        redelivery); the SDK acks the delivery in both cases. A prekey message
        names the one-time prekey it used: it is deleted in the same
        transaction, so a crash before the commit leaves it for the
        redelivery, and none after it leaves it for a replay.
        """
        _require_bytes("session_blob", session_blob)
        with self._transaction():
            if self.is_processed(message.sender, message.msg_id):
                return False
            if used_one_time_prekey is not None:
                self.take_one_time_prekey(used_one_time_prekey)
            self.store_session(message.sender, session_blob)
            self._add_processed(message.sender, message.msg_id)
            self._add_pending(message)
        return True


# --- In memory ---------------------------------------------------------------


class MemoryKeyStore(_KeyStoreBase):
    """Key store in process memory: for tests and clients that keep nothing.

    Single writes need no undo: every primitive validates before it mutates.
    Inside :meth:`atomic` each write first notes the value it replaces (an undo
    journal), so a failing block is rolled back key by key; the two ordered
    tables (processed ids, inbox) are copied whole on their first write instead,
    which keeps their order exact. Blocks nest like SQLite savepoints.
    """

    def __init__(self, *, max_processed_ids: int = MAX_PROCESSED_IDS) -> None:
        self._identity: dict[str, OurIdentity] = {}
        self._signed: dict[int, SignedPreKeyRecord] = {}
        self._one_time: dict[int, OneTimePreKeyRecord] = {}
        self._sessions: dict[str, bytes] = {}
        self._trust: dict[str, TrustedIdentity] = {}
        self._owners: dict[bytes, str] = {}
        self._counters: dict[str, int] = {}
        self._processed: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._pending: OrderedDict[tuple[str, bytes], IncomingMessage] = OrderedDict()
        self._state: dict[str, bytes] = {}
        self._logs: dict[str, dict[int, bytes]] = {}
        """group → {sequence number: record}; numbers only grow, so they give the order."""
        self._log_seq = 0
        self._max_processed = max_processed_ids
        self._journal: list[tuple[dict[Any, Any], Any, Any]] = []
        self._savepoints: list[tuple[int, dict[str, OrderedDict[Any, Any]]]] = []

    def _transaction(self) -> AbstractContextManager[object]:
        return nullcontext()

    @contextmanager
    def atomic(self) -> Iterator[object]:
        """All writes in the block, or none of them (an exception undoes them)."""
        self._savepoints.append((len(self._journal), {}))
        try:
            yield self
        except BaseException:
            mark, copies = self._savepoints.pop()
            while len(self._journal) > mark:
                table, key, old = self._journal.pop()
                if old is _ABSENT:
                    table.pop(key, None)
                else:
                    table[key] = old
            for name, copy in copies.items():
                setattr(self, name, copy)
            raise
        else:
            self._savepoints.pop()
            if not self._savepoints:
                self._journal.clear()

    def _touch(self, table: dict[Any, Any], key: object) -> None:
        """Note ``table[key]`` before it changes, if a block may need to undo it."""
        if self._savepoints:
            self._journal.append((table, key, table.get(key, _ABSENT)))

    def _touch_ordered(self, name: str) -> None:
        if not self._savepoints:
            return
        copy: OrderedDict[Any, Any] | None = None
        for _, copies in self._savepoints:
            if name not in copies:
                copy = copy if copy is not None else OrderedDict(getattr(self, name))
                copies[name] = copy

    def _put(self, table: dict[Any, Any], key: object, value: object) -> None:
        self._touch(table, key)
        table[key] = value

    def _pop(self, table: dict[Any, Any], key: object) -> Any:
        if key in table:
            self._touch(table, key)
        return table.pop(key, None)

    def _load_trust(self, handle: str) -> TrustedIdentity | None:
        return self._trust.get(handle)

    def _store_trust(self, record: TrustedIdentity) -> None:
        self._put(self._trust, record.handle, record)

    def _load_owner(self, identity_key: bytes) -> str | None:
        return self._owners.get(identity_key)

    def _store_owner(self, identity_key: bytes, handle: str) -> None:
        self._put(self._owners, identity_key, handle)

    def _delete_owner(self, identity_key: bytes) -> None:
        self._pop(self._owners, identity_key)

    def _get_counter(self, name: str) -> int | None:
        return self._counters.get(name)

    def _set_counter(self, name: str, value: int) -> None:
        self._put(self._counters, name, value)

    def _add_processed(self, sender: str, msg_id: bytes) -> None:
        self._touch_ordered("_processed")
        self._processed[(sender, msg_id)] = None
        while len(self._processed) > self._max_processed:
            self._processed.popitem(last=False)

    def _add_pending(self, message: IncomingMessage) -> None:
        self._touch_ordered("_pending")
        self._pending[(message.sender, message.msg_id)] = message

    def get_identity(self) -> OurIdentity | None:
        return self._identity.get("")

    def set_identity(self, identity: OurIdentity) -> None:
        self._put(self._identity, "", identity)

    def store_signed_prekey(self, record: SignedPreKeyRecord) -> None:
        self._put(self._signed, record.key_id, record)

    def load_signed_prekey(self, key_id: int) -> SignedPreKeyRecord | None:
        _require_key_id(key_id)
        return self._signed.get(key_id)

    def signed_prekeys(self) -> list[SignedPreKeyRecord]:
        return [self._signed[key_id] for key_id in sorted(self._signed)]

    def remove_signed_prekey(self, key_id: int) -> None:
        _require_key_id(key_id)
        self._pop(self._signed, key_id)

    def store_one_time_prekeys(self, records: Iterable[OneTimePreKeyRecord]) -> None:
        for record in list(records):
            self._put(self._one_time, record.key_id, record)

    def take_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None:
        _require_key_id(key_id)
        return self._pop(self._one_time, key_id)  # type: ignore[no-any-return]

    def load_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None:
        _require_key_id(key_id)
        return self._one_time.get(key_id)

    def one_time_prekey_ids(self) -> list[int]:
        return sorted(self._one_time)

    def load_session(self, handle: str) -> bytes | None:
        _require_handle(handle)
        return self._sessions.get(handle)

    def store_session(self, handle: str, blob: bytes) -> None:
        _require_handle(handle)
        _require_bytes("blob", blob)
        self._put(self._sessions, handle, blob)

    def delete_session(self, handle: str) -> None:
        _require_handle(handle)
        self._pop(self._sessions, handle)

    def is_processed(self, sender: str, msg_id: bytes) -> bool:
        _require_handle(sender)
        _require_bytes("msg_id", msg_id)
        return (sender, msg_id) in self._processed

    def pending_messages(self) -> list[IncomingMessage]:
        return list(self._pending.values())

    def consume(self, sender: str, msg_id: bytes) -> bool:
        _require_handle(sender)
        _require_bytes("msg_id", msg_id)
        if (sender, msg_id) not in self._pending:
            return False
        self._touch_ordered("_pending")
        del self._pending[(sender, msg_id)]
        return True

    def get_state(self, key: str) -> bytes | None:
        _require_state_key(key)
        return self._state.get(key)

    def set_state(self, key: str, value: bytes) -> None:
        _require_state_key(key)
        if not isinstance(value, bytes):
            raise TypeError("state value must be bytes")
        self._put(self._state, key, value)

    def delete_state(self, key: str) -> None:
        _require_state_key(key)
        self._pop(self._state, key)

    def state_items(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every state entry whose key starts with ``prefix``, sorted by key."""
        return sorted((k, v) for k, v in self._state.items() if k.startswith(prefix))

    def append_log(self, group: str, value: bytes) -> None:
        _require_state_key(group)
        if not isinstance(value, bytes):
            raise TypeError("log record must be bytes")
        entries = self._logs.get(group)
        if entries is None:
            entries = {}
            self._put(self._logs, group, entries)
        self._log_seq += 1  # not undone by a rollback: a gap keeps the order
        self._put(entries, self._log_seq, value)

    def read_log(self, group: str, start: int = 0) -> list[bytes]:
        _require_state_key(group)
        entries = self._logs.get(group, {})
        # Sorted: an undone deletion puts an entry back at the dict's end.
        return [entries[seq] for seq in sorted(entries)][start:]

    def delete_log(self, group: str, count: int | None = None) -> None:
        _require_state_key(group)
        entries = self._logs.get(group)
        if entries is None:
            return
        if count is None or count >= len(entries):
            self._pop(self._logs, group)
            return
        for seq in sorted(entries)[:count]:
            self._pop(entries, seq)

    def close(self) -> None:
        """Nothing to release; present so both stores share one lifecycle."""


# --- SQLite, encrypted at rest ---------------------------------------------

_AD_PREFIX = b"blindrelay.keystore.v1\x00"
_MASTER_AD_PREFIX = b"blindrelay.keystore.v1.master\x00"
_KEY_BYTES = 32
_NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES

_KV_TABLES = (
    "settings", "signed_prekeys", "one_time_prekeys", "sessions", "identities", "state",
    "key_owners",
)  # fmt: skip
"""``key_owners``: identity key → the handle it is pinned for (SPEC §13.8), keyed
like every row by a keyed hash of the key, so neither key nor handle shows."""
_ORDERED_TABLES = ("processed", "inbox")
_TABLES = frozenset(_KV_TABLES + _ORDERED_TABLES)
_LOGS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS logs (seq INTEGER PRIMARY KEY, g BLOB NOT NULL, v BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS logs_by_group ON logs (g, seq)",
)
"""Added after the first files were written: created when a store opens, so that
files made before it open unchanged (the SDK then moves its old records in)."""
_CACHED_TABLES = frozenset({"sessions", "identities", "state"})
"""Read on every send (session, trusted key, pending key change, SPEC §3.3); prekeys
and our identity are not kept decrypted here."""
"""Every table name interpolated into SQL comes from here, never from a caller."""


def _message_key(sender: str, msg_id: bytes) -> bytes:
    """Natural key of a received envelope: the sender's handle, then its msg_id."""
    return sender.encode() + b"\x00" + msg_id


def _passphrase_bytes(passphrase: str) -> bytes:
    """NFC first, so the same passphrase typed on two keyboards derives one key."""
    if not isinstance(passphrase, str) or not passphrase:
        raise ValueError("passphrase must be a non-empty str")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _derive_kek(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(
        _KEY_BYTES, _passphrase_bytes(passphrase), salt, opslimit=opslimit, memlimit=memlimit
    )


def _master_ad(salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return (
        _MASTER_AD_PREFIX
        + FORMAT_VERSION.to_bytes(2, "big")
        + salt
        + opslimit.to_bytes(8, "big")
        + memlimit.to_bytes(8, "big")
    )


def _subkey(master: bytes, person: bytes) -> bytes:
    return nacl.hash.blake2b(
        b"", digest_size=_KEY_BYTES, key=master, person=person, encoder=nacl.encoding.RawEncoder
    )


if sys.platform == "win32":  # pragma: no cover - no advisory file locks: no row cache

    def _own_file(path: Path) -> int | None:
        return None

else:
    import fcntl

    def _own_file(path: Path) -> int | None:
        """Hold an exclusive advisory lock on the store file while it is open.

        The store keeps decrypted rows in memory (RECORD_CACHE_SIZE), which is
        sound only if nothing else writes the file meanwhile: a second writer
        could advance a session behind our cached copy, and we would then
        reuse its message keys. A second open — another process, or another
        object here — fails with KeyStoreInUse instead. Taken before SQLite
        opens the file and released after it closed it: closing any other
        descriptor of the file would drop SQLite's own POSIX locks.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise KeyStoreInUse(f"{path} is open in another process") from None
        return fd


def _disown_file(owner: int | None) -> None:
    if owner is not None:
        os.close(owner)  # releases the lock


def _check_costs(opslimit: int, memlimit: int, *, max_memlimit: int) -> None:
    if not argon2id.OPSLIMIT_MIN <= opslimit <= argon2id.OPSLIMIT_MAX:
        raise ValueError("opslimit out of Argon2id range")
    if not argon2id.MEMLIMIT_MIN <= memlimit <= max_memlimit:
        raise ValueError("memlimit out of accepted range")


class SqliteKeyStore(_KeyStoreBase):
    """Key store in one SQLite file, every record sealed (see the module docstring).

    One process and one thread own a store: the file is locked while it is
    open (a second open raises KeyStoreInUse) and the connection refuses use
    from another thread. Writes are ``synchronous=FULL`` — the SDK acks deliveries
    on the strength of a commit, so a commit must survive power loss, and a
    client writes a few times per message, far below the ~1.5k commits/s FULL
    allows. ``secure_delete`` zeroes freed pages so a taken one-time prekey
    does not linger in the file.
    """

    def __init__(
        self,
        db: sqlite_utils.Database,
        master_key: bytes,
        header: dict[str, Any],
        *,
        max_processed_ids: int,
        owner: int | None = None,
    ) -> None:
        """Use :meth:`open`; this wires an already unlocked database.

        ``owner`` is the descriptor holding the file's lock (:func:`_own_file`):
        only a store that owns its file keeps rows decrypted in memory.
        """
        self._db = db
        self._header = header
        self._record_key = _subkey(master_key, b"br.ks.record")
        self._lookup_key = _subkey(master_key, b"br.ks.lookup")
        self._max_processed = max_processed_ids
        self._closed = False
        self._owner = owner
        self._cached_tables = _CACHED_TABLES if owner is not None else frozenset()
        self._records: dict[tuple[str, bytes], list[Any] | None] = {}
        """Decrypted rows of the hot tables as the file holds them (see RECORD_CACHE_SIZE)."""

    @classmethod
    def open(
        cls,
        path: str | Path,
        passphrase: str,
        *,
        create: bool = False,
        opslimit: int = DEFAULT_OPSLIMIT,
        memlimit: int = DEFAULT_MEMLIMIT,
        max_processed_ids: int = MAX_PROCESSED_IDS,
    ) -> Self:
        """Unlock the store at ``path``; with ``create``, make it if absent.

        The Argon2 costs apply only when creating; an existing store uses the
        costs in its header. Raises :class:`WrongPassphrase`,
        :class:`KeyStoreCorrupted`, or ``FileNotFoundError`` without ``create``.
        """
        path = Path(path)
        _passphrase_bytes(passphrase)
        existed = path.exists()
        if not existed and not create:
            raise FileNotFoundError(f"no key store at {path}")
        if create:  # before connecting: a refused cost must not leave an empty file
            _check_costs(opslimit, memlimit, max_memlimit=argon2id.MEMLIMIT_MAX)
        owner = _own_file(path)  # before SQLite opens it (see _own_file)
        try:
            conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT only
        except BaseException:
            _disown_file(owner)
            raise
        try:
            db = sqlite_utils.Database(conn, execute_plugins=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA temp_store=MEMORY")
            if "header" not in db.table_names():
                if existed and db.table_names():
                    raise KeyStoreCorrupted(f"{path} is not a blindrelay key store")
                master, header = cls._initialise(db, passphrase, opslimit, memlimit)
            else:
                header = cls._read_header(db)
                master = cls._unwrap(header, passphrase)
            for statement in _LOGS_SCHEMA:
                conn.execute(statement)
        except sqlite3.DatabaseError as exc:
            conn.close()
            _disown_file(owner)
            raise KeyStoreCorrupted(f"{path} is not a blindrelay key store") from exc
        except BaseException:
            conn.close()
            _disown_file(owner)
            raise
        store = cls(db, master, header, max_processed_ids=max_processed_ids, owner=owner)
        try:
            store._upgrade()
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _initialise(
        db: sqlite_utils.Database, passphrase: str, opslimit: int, memlimit: int
    ) -> tuple[bytes, dict[str, Any]]:
        salt = nacl.utils.random(argon2id.SALTBYTES)
        master = nacl.utils.random(_KEY_BYTES)
        header = {
            "id": 1,
            "format": FORMAT_VERSION,
            "salt": salt,
            "opslimit": opslimit,
            "memlimit": memlimit,
            "wrapped_master": SqliteKeyStore._wrap(master, passphrase, salt, opslimit, memlimit),
        }
        with db.atomic():
            for table in _KV_TABLES:
                db.table(table).create({"k": bytes, "v": bytes}, pk="k", not_null={"v"})
            db.table("processed").create({"seq": int, "k": bytes}, pk="seq", not_null={"k"})
            db.table("inbox").create(
                {"seq": int, "k": bytes, "v": bytes}, pk="seq", not_null={"k", "v"}
            )
            for table in _ORDERED_TABLES:
                db.table(table).create_index(["k"], unique=True)
            db.table("header").create(
                {
                    "id": int,
                    "format": int,
                    "salt": bytes,
                    "opslimit": int,
                    "memlimit": int,
                    "wrapped_master": bytes,
                },
                pk="id",
                not_null=set(header) - {"id"},
            )
            columns = ", ".join(header)
            placeholders = ", ".join("?" for _ in header)
            db.execute(
                f"INSERT INTO header ({columns}) VALUES ({placeholders})",  # noqa: S608
                list(header.values()),
            )
        return master, header

    @staticmethod
    def _read_header(db: sqlite_utils.Database) -> dict[str, Any]:
        rows = list(db["header"].rows)
        if len(rows) != 1 or rows[0].get("format") != FORMAT_VERSION:
            raise KeyStoreCorrupted("key store header missing or of another format")
        header = rows[0]
        try:
            _check_costs(header["opslimit"], header["memlimit"], max_memlimit=MAX_ACCEPTED_MEMLIMIT)
        except (TypeError, ValueError) as exc:
            raise KeyStoreCorrupted("key store header has unacceptable Argon2 costs") from exc
        return header

    @staticmethod
    def _wrap(master: bytes, passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
        kek = _derive_kek(passphrase, salt, opslimit, memlimit)
        nonce = nacl.utils.random(_NONCE_BYTES)
        ad = _master_ad(salt, opslimit, memlimit)
        return nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            master, ad, nonce, kek
        )

    @staticmethod
    def _unwrap(header: dict[str, Any], passphrase: str) -> bytes:
        salt, ops, mem = header["salt"], header["opslimit"], header["memlimit"]
        kek = _derive_kek(passphrase, salt, ops, mem)
        wrapped = header["wrapped_master"]
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                wrapped[_NONCE_BYTES:], _master_ad(salt, ops, mem), wrapped[:_NONCE_BYTES], kek
            )
        except nacl.exceptions.CryptoError:
            raise WrongPassphrase("wrong passphrase for this key store") from None

    def change_passphrase(
        self,
        old_passphrase: str,
        new_passphrase: str,
        *,
        opslimit: int = DEFAULT_OPSLIMIT,
        memlimit: int = DEFAULT_MEMLIMIT,
    ) -> None:
        """Rewrap the master key under a new passphrase (and costs).

        Records are untouched, so a copy of the file taken earlier still opens
        with the old passphrase: this protects the file from now on, not copies.
        """
        _check_costs(opslimit, memlimit, max_memlimit=argon2id.MEMLIMIT_MAX)
        master = self._unwrap(self._header, old_passphrase)
        salt = nacl.utils.random(argon2id.SALTBYTES)
        update = {
            "salt": salt,
            "opslimit": opslimit,
            "memlimit": memlimit,
            "wrapped_master": self._wrap(master, new_passphrase, salt, opslimit, memlimit),
        }
        with self._transaction():
            self._db.execute(
                "UPDATE header SET salt = ?, opslimit = ?, memlimit = ?, wrapped_master = ?"
                " WHERE id = 1",
                [salt, opslimit, memlimit, update["wrapped_master"]],
            )
        self._header = {**self._header, **update}

    def close(self) -> None:
        """Checkpoint the WAL into the file and release the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._records.clear()
        try:
            self._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.conn.close()
            _disown_file(self._owner)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Sealing

    # Every record read or written costs one lookup hash and one AEAD call, a
    # bulk send several per message: hashlib's BLAKE2b (the same function as
    # libsodium's keyed generichash, ~0.7 µs against ~7 µs through nacl.hash's
    # argument checks) and the protocol's direct libsodium AEAD calls.

    def _lookup(self, table: str, natural_key: bytes) -> bytes:
        data = table.encode() + b"\x00" + natural_key
        return hashlib.blake2b(data, digest_size=32, key=self._lookup_key).digest()

    def _seal(self, table: str, k: bytes, fields: list[Any]) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = msgpack.packb(fields, use_bin_type=True)
        ad = _AD_PREFIX + table.encode() + b"\x00" + k
        return nonce + xchacha20poly1305_encrypt(self._record_key, nonce, plaintext, ad)

    def _open_sealed(self, table: str, k: bytes, sealed: bytes) -> list[Any]:
        ad = _AD_PREFIX + table.encode() + b"\x00" + k
        try:
            if len(sealed) < _NONCE_BYTES:
                raise SodiumError("record shorter than its nonce")
            plaintext = xchacha20poly1305_decrypt(
                self._record_key, sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], ad
            )
        except SodiumError:
            raise KeyStoreCorrupted(f"a record in {table!r} fails authentication") from None
        fields = msgpack.unpackb(plaintext, raw=False, strict_map_key=True)
        if not isinstance(fields, list):
            raise KeyStoreCorrupted(f"a record in {table!r} is malformed")
        return fields

    # Storage primitives

    @contextmanager
    def _transaction(self) -> Iterator[object]:
        try:
            with self._db.atomic():
                yield self
        except BaseException:
            self._records.clear()  # rolled back: the cache may hold writes the file lost
            raise

    def atomic(self) -> AbstractContextManager[object]:
        """All writes in the block, or none: one transaction (a savepoint when nested)."""
        return self._transaction()

    def _put(self, table: str, natural_key: bytes, fields: list[Any]) -> None:
        """One statement: all or nothing by itself, its own commit outside a transaction.

        Writes that are one ``_put`` or ``_delete`` need no ``_transaction``
        around them; inside an :meth:`atomic` block that would cost a SAVEPOINT
        and a RELEASE per write (a bulk send makes two writes per message).
        """
        assert table in _KV_TABLES
        k = self._lookup(table, natural_key)
        sql = (
            f"INSERT INTO {table} (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"  # noqa: S608
        )
        self._db.execute(sql, [k, self._seal(table, k, fields)])
        if table in self._cached_tables:
            self._cache(table, natural_key, fields)

    def _get(self, table: str, natural_key: bytes) -> list[Any] | None:
        """The record's fields (callers never mutate them: they may be the cache's)."""
        assert table in _KV_TABLES
        cached = table in self._cached_tables
        if cached:
            try:
                return self._records[(table, natural_key)]
            except KeyError:
                pass
        k = self._lookup(table, natural_key)
        row = self._db.execute(f"SELECT v FROM {table} WHERE k = ?", [k]).fetchone()  # noqa: S608
        fields = None if row is None else self._open_sealed(table, k, row[0])
        if cached:
            self._cache(table, natural_key, fields)
        return fields

    def _delete(self, table: str, natural_key: bytes) -> bool:
        assert table in _KV_TABLES
        k = self._lookup(table, natural_key)
        cursor = self._db.execute(f"DELETE FROM {table} WHERE k = ?", [k])  # noqa: S608
        if table in self._cached_tables:
            self._cache(table, natural_key, None)
        return cursor.rowcount > 0

    def _cache(self, table: str, natural_key: bytes, fields: list[Any] | None) -> None:
        """Remember what the file now holds for a row (None: no such row), oldest out first."""
        records = self._records
        key = (table, natural_key)
        if key not in records and len(records) >= RECORD_CACHE_SIZE:
            del records[next(iter(records))]
        records[key] = fields

    def _all(self, table: str) -> list[list[Any]]:
        assert table in _TABLES
        rows = self._db.execute(f"SELECT k, v FROM {table} ORDER BY rowid").fetchall()  # noqa: S608
        return [self._open_sealed(table, k, v) for k, v in rows]

    def _load_trust(self, handle: str) -> TrustedIdentity | None:
        fields = self._get("identities", handle.encode())
        if fields is None:
            return None
        stored_handle, key, first_seen_ms, verified = fields
        return TrustedIdentity(stored_handle, key, first_seen_ms, verified)

    def _store_trust(self, record: TrustedIdentity) -> None:
        self._put(
            "identities",
            record.handle.encode(),
            [record.handle, record.identity_key, record.first_seen_ms, record.verified],
        )

    def _load_owner(self, identity_key: bytes) -> str | None:
        fields = self._get("key_owners", identity_key)
        return None if fields is None else str(fields[0])

    def _store_owner(self, identity_key: bytes, handle: str) -> None:
        self._put("key_owners", identity_key, [handle])

    def _delete_owner(self, identity_key: bytes) -> None:
        self._delete("key_owners", identity_key)

    def _upgrade(self) -> None:
        """Bring a store made by an earlier version up to date (idempotent).

        Stores made before the key index get the ``key_owners`` table, filled
        from the trust records; where two handles already hold one key (pinned
        before SPEC §13.8 forbade it) the first pinned keeps it, so messages
        under the other handle are refused from now on.
        """
        if "key_owners" in self._db.table_names():
            return
        with self._transaction():
            self._db.table("key_owners").create({"k": bytes, "v": bytes}, pk="k", not_null={"v"})
            for handle, key, *_ in self._all("identities"):
                if self._load_owner(key) is None:
                    self._store_owner(key, handle)

    def _get_counter(self, name: str) -> int | None:
        fields = self._get("settings", name.encode())
        return None if fields is None else int(fields[0])

    def _set_counter(self, name: str, value: int) -> None:
        self._put("settings", name.encode(), [value])

    def _add_processed(self, sender: str, msg_id: bytes) -> None:
        k = self._lookup("processed", _message_key(sender, msg_id))
        self._db.execute("INSERT INTO processed (k) VALUES (?)", [k])
        self._db.execute(
            "DELETE FROM processed WHERE seq <= (SELECT max(seq) FROM processed) - ?",
            [self._max_processed],
        )

    def _add_pending(self, message: IncomingMessage) -> None:
        k = self._lookup("inbox", _message_key(message.sender, message.msg_id))
        fields = [message.msg_id, message.sender, message.received_at_ms, message.body]
        self._db.execute(
            "INSERT INTO inbox (k, v) VALUES (?, ?)", [k, self._seal("inbox", k, fields)]
        )

    # Public API (documented on KeyStore)

    def get_identity(self) -> OurIdentity | None:
        fields = self._get("settings", b"identity")
        return None if fields is None else OurIdentity(*fields)

    def set_identity(self, identity: OurIdentity) -> None:
        fields = [
            identity.handle,
            identity.account_kind,
            identity.relay_url,
            identity.identity_seed,
            identity.identity_public,
        ]
        with self._transaction():
            self._put("settings", b"identity", fields)

    def store_signed_prekey(self, record: SignedPreKeyRecord) -> None:
        fields = [
            record.key_id,
            record.private_key,
            record.public_key,
            record.signature,
            record.created_at_ms,
        ]
        with self._transaction():
            self._put("signed_prekeys", record.key_id.to_bytes(8, "big"), fields)

    def load_signed_prekey(self, key_id: int) -> SignedPreKeyRecord | None:
        _require_key_id(key_id)
        fields = self._get("signed_prekeys", key_id.to_bytes(8, "big"))
        return None if fields is None else SignedPreKeyRecord(*fields)

    def signed_prekeys(self) -> list[SignedPreKeyRecord]:
        records = [SignedPreKeyRecord(*fields) for fields in self._all("signed_prekeys")]
        return sorted(records, key=lambda record: record.key_id)

    def remove_signed_prekey(self, key_id: int) -> None:
        _require_key_id(key_id)
        with self._transaction():
            self._delete("signed_prekeys", key_id.to_bytes(8, "big"))

    def store_one_time_prekeys(self, records: Iterable[OneTimePreKeyRecord]) -> None:
        with self._transaction():
            for record in records:
                fields = [record.key_id, record.private_key, record.public_key]
                self._put("one_time_prekeys", record.key_id.to_bytes(8, "big"), fields)

    def take_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None:
        _require_key_id(key_id)
        natural_key = key_id.to_bytes(8, "big")
        with self._transaction():
            fields = self._get("one_time_prekeys", natural_key)
            if fields is None:
                return None
            self._delete("one_time_prekeys", natural_key)
        return OneTimePreKeyRecord(*fields)

    def load_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None:
        """Read without deleting: decryption first, deletion with the commit."""
        _require_key_id(key_id)
        fields = self._get("one_time_prekeys", key_id.to_bytes(8, "big"))
        return None if fields is None else OneTimePreKeyRecord(*fields)

    def one_time_prekey_ids(self) -> list[int]:
        return sorted(int(fields[0]) for fields in self._all("one_time_prekeys"))

    def load_session(self, handle: str) -> bytes | None:
        _require_handle(handle)
        fields = self._get("sessions", handle.encode())
        return None if fields is None else bytes(fields[1])

    def store_session(self, handle: str, blob: bytes) -> None:
        _require_handle(handle)
        _require_bytes("blob", blob)
        self._put("sessions", handle.encode(), [handle, blob])  # one statement (see _put)

    def delete_session(self, handle: str) -> None:
        _require_handle(handle)
        with self._transaction():
            self._delete("sessions", handle.encode())

    def is_processed(self, sender: str, msg_id: bytes) -> bool:
        _require_handle(sender)
        _require_bytes("msg_id", msg_id)
        k = self._lookup("processed", _message_key(sender, msg_id))
        return self._db.execute("SELECT 1 FROM processed WHERE k = ?", [k]).fetchone() is not None

    def pending_messages(self) -> list[IncomingMessage]:
        return [IncomingMessage(*fields) for fields in self._all("inbox")]

    def consume(self, sender: str, msg_id: bytes) -> bool:
        _require_handle(sender)
        _require_bytes("msg_id", msg_id)
        k = self._lookup("inbox", _message_key(sender, msg_id))
        with self._transaction():
            cursor = self._db.execute("DELETE FROM inbox WHERE k = ?", [k])
        return cursor.rowcount > 0

    def get_state(self, key: str) -> bytes | None:
        _require_state_key(key)
        fields = self._get("state", key.encode())
        return None if fields is None else bytes(fields[1])

    def set_state(self, key: str, value: bytes) -> None:
        _require_state_key(key)
        if not isinstance(value, bytes):
            raise TypeError("state value must be bytes")
        self._put("state", key.encode(), [key, value])  # one statement (see _put)

    def delete_state(self, key: str) -> None:
        _require_state_key(key)
        self._delete("state", key.encode())  # one statement (see _put)

    def state_items(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every state entry whose key starts with ``prefix``, sorted by key.

        Keys are stored as keyed hashes, so this opens every state row: meant
        for loading at start and for listings, not for hot paths.
        """
        items = ((str(key), bytes(value)) for key, value in self._all("state"))
        return sorted(item for item in items if item[0].startswith(prefix))

    def _log_ad_key(self, g: bytes, seq: int) -> bytes:
        return g + seq.to_bytes(8, "big")

    def append_log(self, group: str, value: bytes) -> None:
        """One row: the next sequence number, sealed to its group and position."""
        _require_state_key(group)
        if not isinstance(value, bytes):
            raise TypeError("log record must be bytes")
        g = self._lookup("logs", group.encode())
        ((seq,),) = self._db.execute("SELECT coalesce(max(seq), 0) + 1 FROM logs").fetchall()
        sealed = self._seal("logs", self._log_ad_key(g, seq), [group, value])
        self._db.execute("INSERT INTO logs (seq, g, v) VALUES (?, ?, ?)", [seq, g, sealed])

    def read_log(self, group: str, start: int = 0) -> list[bytes]:
        _require_state_key(group)
        g = self._lookup("logs", group.encode())
        rows = self._db.execute(
            "SELECT seq, v FROM logs WHERE g = ? ORDER BY seq LIMIT -1 OFFSET ?", [g, start]
        ).fetchall()
        records = []
        for seq, sealed in rows:
            stored_group, value = self._open_sealed("logs", self._log_ad_key(g, seq), sealed)
            if stored_group != group:
                raise KeyStoreCorrupted("a log row is filed under another group")
            records.append(bytes(value))
        return records

    def delete_log(self, group: str, count: int | None = None) -> None:
        _require_state_key(group)
        g = self._lookup("logs", group.encode())
        self._db.execute(
            "DELETE FROM logs WHERE seq IN (SELECT seq FROM logs WHERE g = ? ORDER BY seq LIMIT ?)",
            [g, -1 if count is None else count],
        )
