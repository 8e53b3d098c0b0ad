"""Key custody: our identity, our prekeys, sessions and the contacts' keys we trust.

Invariants (SPEC §3.3, §5.1, §13.8, §15.6):

- A contact's identity key is never replaced silently: a different key reads as
  ``CHANGED`` and only :meth:`KeyRecords.approve_identity` (an explicit user
  action) replaces it. The key a contact presented meanwhile is kept as its
  pending identity change until the user decides.
- An identity key is pinned for at most one handle: pinning or approving a key
  that another handle holds raises :class:`IdentityKeyReused`. The
  ``key_owners`` index answers by key; the trust record stays the truth.
- A handle once seen published stays published (no method unmarks it), and the
  key last proven in the relay's log is kept beside it, with where that log holds its
  binding: a pinned key that is not that one has no proof (the SDK asks the log before
  encrypting to it), and a binding earlier in that log is no proof (T60).
- A one-time prekey is gone once taken (X3DH forward secrecy needs its private
  key destroyed after first use); prekey ids are never handed out twice.
- A signed prekey other than the one the relay last took is retired from the
  moment it took that one; the store keeps the date, the SDK deletes the private
  key a grace period later (SPEC §13.3).

What it is not: cryptography (``blindrelay.protocol.crypto``) or what a session
holds — sessions are opaque bytes here.
"""

from __future__ import annotations

from collections.abc import Iterable

from blindrelay.protocol.errors import IdentityKeyReused, UntrustedIdentity

from .base import Storage, handle_key
from .records import (
    IDENTITY_KEY_BYTES,
    MAX_PREKEY_ID,
    IdentityStatus,
    OneTimePreKeyRecord,
    OurIdentity,
    SignedPreKeyRecord,
    SkippedKeyHolder,
    TrustedIdentity,
    classify_identity,
    require_bytes,
    require_count,
    require_handle,
    require_key_id,
)

_OUR_IDENTITY = b"identity"
_NEXT_PREKEY_ID = b"next_prekey_id"
_CURRENT_SIGNED_PREKEY = b"current_signed_prekey"
_PUBLISHED_SIGNED_PREKEY = b"published_signed_prekey"
_RETIRED_SIGNED_PREKEYS = b"retired_signed_prekeys"
_SKIPPED_KEY_HOLDERS = b"skipped_key_holders"
"""``settings`` rows of this module (the other settings are in ``settings``)."""


def _key_id(key_id: int) -> bytes:
    require_key_id(key_id)
    return key_id.to_bytes(8, "big")


class KeyRecords(Storage):
    """Our identity, prekeys, sessions, trusted identities and pending identity changes."""

    # Our account

    def get_identity(self) -> OurIdentity | None:
        fields = self._get("settings", _OUR_IDENTITY)
        return None if fields is None else OurIdentity(*fields)

    def set_identity(self, identity: OurIdentity) -> None:
        fields = (
            identity.handle,
            identity.account_kind,
            identity.relay_url,
            identity.identity_seed,
            identity.identity_public,
        )
        self._put("settings", _OUR_IDENTITY, fields)

    # Signed prekeys

    def store_signed_prekey(self, record: SignedPreKeyRecord) -> None:
        fields = (
            record.key_id,
            record.private_key,
            record.public_key,
            record.signature,
            record.created_at_ms,
        )
        self._put("signed_prekeys", _key_id(record.key_id), fields)

    def load_signed_prekey(self, key_id: int) -> SignedPreKeyRecord | None:
        fields = self._get("signed_prekeys", _key_id(key_id))
        return None if fields is None else SignedPreKeyRecord(*fields)

    def signed_prekeys(self) -> list[SignedPreKeyRecord]:
        records = [SignedPreKeyRecord(*fields) for fields in self._rows("signed_prekeys")]
        return sorted(records, key=lambda record: record.key_id)

    def remove_signed_prekey(self, key_id: int) -> None:
        """Destroy a signed prekey's private key, and forget it was published or retired."""
        with self._transaction():
            self._delete("signed_prekeys", _key_id(key_id))
            if self.published_signed_prekey() == key_id:
                self._delete("settings", _PUBLISHED_SIGNED_PREKEY)
            retired = self.retired_signed_prekeys()
            if retired.pop(key_id, None) is not None:
                self._put_retired(retired)

    def set_current_signed_prekey(self, key_id: int) -> None:
        """Mark which stored signed prekey the relay is advertising."""
        with self._transaction():
            if self.load_signed_prekey(key_id) is None:
                raise KeyError(f"no signed prekey {key_id}")
            self._put("settings", _CURRENT_SIGNED_PREKEY, (key_id,))

    def current_signed_prekey(self) -> SignedPreKeyRecord | None:
        """The advertised signed prekey, if one is set and still stored."""
        fields = self._get("settings", _CURRENT_SIGNED_PREKEY)
        return None if fields is None else self.load_signed_prekey(int(fields[0]))

    def published_signed_prekey(self) -> int | None:
        """The id of the signed prekey the relay last confirmed it took, if known."""
        fields = self._get("settings", _PUBLISHED_SIGNED_PREKEY)
        return None if fields is None else int(fields[0])

    def mark_signed_prekey_published(self, key_id: int, now_ms: int) -> None:
        """The relay took signed prekey ``key_id`` (its OK): it serves that one from now
        on, so every other we hold is retired as of ``now_ms`` (one retired earlier keeps
        its date) — kept only for first messages still queued for us (SPEC §13.3)."""
        require_count("now_ms", now_ms)
        with self._transaction():
            if self.load_signed_prekey(key_id) is None:
                raise KeyError(f"no signed prekey {key_id}")
            retired = self.retired_signed_prekeys()
            retired.pop(key_id, None)
            for record in self.signed_prekeys():
                if record.key_id != key_id:
                    retired.setdefault(record.key_id, now_ms)
            self._put("settings", _PUBLISHED_SIGNED_PREKEY, (key_id,))
            self._put_retired(retired)

    def retired_signed_prekeys(self) -> dict[int, int]:
        """Signed prekey id → when the relay stopped serving it (Unix ms)."""
        fields = self._get("settings", _RETIRED_SIGNED_PREKEYS)
        if fields is None:
            return {}
        return {int(fields[i]): int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}

    def _put_retired(self, retired: dict[int, int]) -> None:
        if not retired:
            self._delete("settings", _RETIRED_SIGNED_PREKEYS)
            return
        flat = [value for pair in sorted(retired.items()) for value in pair]
        self._put("settings", _RETIRED_SIGNED_PREKEYS, flat)

    # One-time prekeys

    def allocate_prekey_ids(self, count: int) -> range:
        """Reserve ``count`` fresh prekey ids; ids are never handed out twice."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("count must be a positive int")
        with self._transaction():
            fields = self._get("settings", _NEXT_PREKEY_ID)
            first = 1 if fields is None else int(fields[0])
            if first + count - 1 > MAX_PREKEY_ID:
                raise OverflowError("prekey id space exhausted")
            self._put("settings", _NEXT_PREKEY_ID, (first + count,))
        return range(first, first + count)

    def store_one_time_prekeys(self, records: Iterable[OneTimePreKeyRecord]) -> None:
        with self._transaction():
            for record in records:
                fields = (record.key_id, record.private_key, record.public_key)
                self._put("one_time_prekeys", _key_id(record.key_id), fields)

    def take_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None:
        """Read and delete: the private key must not outlive its first use."""
        natural_key = _key_id(key_id)
        with self._transaction():
            fields = self._get("one_time_prekeys", natural_key)
            if fields is None:
                return None
            self._delete("one_time_prekeys", natural_key)
        return OneTimePreKeyRecord(*fields)

    def load_one_time_prekey(self, key_id: int) -> OneTimePreKeyRecord | None:
        """Read without deleting: decryption first, deletion with the commit."""
        fields = self._get("one_time_prekeys", _key_id(key_id))
        return None if fields is None else OneTimePreKeyRecord(*fields)

    def remove_one_time_prekeys(self, key_ids: Iterable[int]) -> None:
        """Destroy these one-time prekeys' private keys (those the relay no longer serves)."""
        with self._transaction():
            for key_id in key_ids:
                self._delete("one_time_prekeys", _key_id(key_id))

    def one_time_prekey_ids(self) -> list[int]:
        return sorted(int(fields[0]) for fields in self._rows("one_time_prekeys"))

    # Sessions

    def load_session(self, handle: str) -> bytes | None:
        require_handle(handle)
        fields = self._get("sessions", handle_key(handle))
        return None if fields is None else bytes(fields[1])

    def store_session(self, handle: str, blob: bytes) -> None:
        require_handle(handle)
        require_bytes("blob", blob)
        self._put("sessions", handle_key(handle), (handle, blob))

    def delete_session(self, handle: str) -> None:
        require_handle(handle)
        self._delete("sessions", handle_key(handle))

    def skipped_key_holders(self) -> list[SkippedKeyHolder]:
        """The sessions that hold skipped message keys, least recently grown first (SPEC
        §13.4): one row for all, so the budget across sessions opens no session to decide."""
        fields = self._get("settings", _SKIPPED_KEY_HOLDERS)
        if fields is None:
            return []
        return [
            SkippedKeyHolder(str(fields[i]), int(fields[i + 1]), int(fields[i + 2]))
            for i in range(0, len(fields) - 2, 3)
        ]

    def set_skipped_key_holders(self, holders: Iterable[SkippedKeyHolder]) -> None:
        """Replace the list (the caller's bound keeps it short; an empty one is no row)."""
        flat: list[str | int] = []
        for holder in holders:
            if not isinstance(holder, SkippedKeyHolder):
                raise TypeError("holders must be SkippedKeyHolder records")
            flat += [holder.handle, holder.count, holder.gained_at_ms]
        if flat:
            self._put("settings", _SKIPPED_KEY_HOLDERS, flat)
        else:
            self._delete("settings", _SKIPPED_KEY_HOLDERS)

    # Trusted identities (TOFU)

    def get_trusted_identity(self, handle: str) -> TrustedIdentity | None:
        """The key we trust for ``handle``, with when and how we came to trust it."""
        require_handle(handle)
        fields = self._get("identities", handle_key(handle))
        return None if fields is None else TrustedIdentity(*fields)

    def trusted_identities(self) -> list[TrustedIdentity]:
        """Every contact whose key we trust, by handle."""
        records = [TrustedIdentity(*fields) for fields in self._rows("identities")]
        return sorted(records, key=lambda record: record.handle)

    def _trusted_key(self, handle: str) -> bytes | None:
        """Only the key of a trust record: read before every send, so no record is built."""
        require_handle(handle)
        fields = self._get("identities", handle_key(handle))
        return None if fields is None else bytes(fields[1])

    def check_identity(self, handle: str, identity_key: bytes) -> IdentityStatus:
        """Classify a presented key without changing anything (the TOFU decision)."""
        require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        return classify_identity(self._trusted_key(handle), identity_key)

    def identity_owner(self, identity_key: bytes) -> str | None:
        """The handle ``identity_key`` is pinned for, or None (SPEC §13.8: at most one).

        The index is a lookup aid: an entry counts only while that handle's
        trust record still holds this key.
        """
        require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        fields = self._get("key_owners", identity_key)
        if fields is None:
            return None
        handle = str(fields[0])
        return handle if self._trusted_key(handle) == identity_key else None

    def _pin(self, record: TrustedIdentity) -> None:
        """Store a trust record and its index entry; refuse a key another handle holds.

        SPEC §13.8: "a key already pinned for another handle MUST be refused".
        """
        owner = self.identity_owner(record.identity_key)
        if owner is not None and owner != record.handle:
            raise IdentityKeyReused(record.handle, owner)
        previous = self.get_trusted_identity(record.handle)
        if previous is not None and previous.identity_key != record.identity_key:
            self._delete("key_owners", previous.identity_key)  # replaced: the old key is free
        fields = (record.handle, record.identity_key, record.first_seen_ms, record.verified)
        self._put("identities", handle_key(record.handle), fields)
        if owner is None:
            self._put("key_owners", record.identity_key, (record.handle,))

    def index_identity_keys(self) -> None:
        """Rebuild the key index from the trust records, first pinned first (an upgrade).

        Where two handles hold one key (pinned before SPEC §13.8 forbade it) the
        first pinned keeps it, so messages under the other are refused from now on.
        """
        with self._transaction():
            for handle, key, *_ in self._rows("identities"):
                if self.identity_owner(key) is None:
                    self._put("key_owners", key, (handle,))

    def trust_identity(self, handle: str, identity_key: bytes, now_ms: int) -> IdentityStatus:
        """Trust on first use; returns the status found (``NEW`` = just recorded).

        Raises :class:`IdentityKeyReused` for a key pinned for another handle and
        :class:`UntrustedIdentity` on a changed key rather than overwrite it.
        """
        require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
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
        require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        with self._transaction():
            stored = self.get_trusted_identity(handle)
            if stored is not None and stored.identity_key == identity_key:
                record = TrustedIdentity(
                    handle, identity_key, stored.first_seen_ms, stored.verified or verified
                )
            else:
                record = TrustedIdentity(handle, identity_key, now_ms, verified)
            self._pin(record)

    # Pending identity changes (SPEC §3.3): read before every send

    def pending_identity_change(self, handle: str) -> bytes | None:
        """The new identity key ``handle`` presented that the user has not approved yet."""
        require_handle(handle)
        fields = self._get("identity_changes", handle_key(handle))
        return None if fields is None else bytes(fields[1])

    def record_identity_change(self, handle: str, identity_key: bytes) -> None:
        require_handle(handle)
        require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        self._put("identity_changes", handle_key(handle), (handle, identity_key))

    def clear_identity_change(self, handle: str) -> None:
        require_handle(handle)
        self._delete("identity_changes", handle_key(handle))

    def pending_identity_changes(self) -> dict[str, bytes]:
        """Every contact whose new key awaits the user, with that key."""
        return {str(h): bytes(key) for h, key in self._rows("identity_changes")}

    # Published accounts (SPEC §15.6): read before every send

    def is_published(self, handle: str) -> bool:
        """Whether ``handle`` was ever seen as a published account (a business, or a
        bundle with a log proof): its keys need a log proof, whatever the relay says later."""
        require_handle(handle)
        return self._get("published", handle_key(handle)) is not None

    def logged_key(self, handle: str) -> bytes | None:
        """The identity key of ``handle`` last proven in the relay's log, if any."""
        require_handle(handle)
        fields = self._get("published", handle_key(handle))
        return None if fields is None or fields[1] is None else bytes(fields[1])

    def mark_published(self, handle: str) -> None:
        """Remember ``handle`` as published, for good (a proven key is kept)."""
        if not self.is_published(handle):
            self._put("published", handle_key(handle), (handle, None))

    def logged_index(self, handle: str, relay_key: bytes) -> int | None:
        """Where the log ``relay_key`` signs holds the binding of :meth:`logged_key`; None
        if no proof under that key was kept (another key's log numbers its entries afresh;
        an SDK before T60 kept no index)."""
        require_handle(handle)
        fields = self._get("published", handle_key(handle))
        if fields is None or len(fields) < 4 or fields[3] is None:
            return None
        return int(fields[2]) if bytes(fields[3]) == relay_key else None

    def mark_logged(
        self,
        handle: str,
        identity_key: bytes,
        *,
        index: int | None = None,
        relay_key: bytes | None = None,
    ) -> None:
        """``identity_key`` was proven logged for ``handle`` (which is published), by its
        binding at ``index`` of the log ``relay_key`` signs (T60: an earlier one is no
        proof any more)."""
        require_handle(handle)
        require_bytes("identity_key", identity_key, IDENTITY_KEY_BYTES)
        if (index is None) != (relay_key is None):
            raise ValueError("a binding's index is kept with the relay key of its log")
        where: tuple[int | None, bytes | None] = (None, None)
        if index is not None and relay_key is not None:
            require_count("index", index)
            require_bytes("relay_key", relay_key, IDENTITY_KEY_BYTES)
            where = (index, relay_key)
        self._put("published", handle_key(handle), (handle, identity_key, *where))
