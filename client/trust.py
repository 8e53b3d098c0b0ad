"""Whose keys we trust: the relay's, and each contact's identity key (SPEC §3.3, §4.1, §13.8–13.9).

The rules, each enforced in one place:

- **Trust on first use, never silently changed** (SPEC §3.3). Every identity
  key a contact presents — in a bundle, a prekey message, a forwarded
  statement or a profile — goes through :meth:`IdentityTrust.check`. The first
  key seen for a handle is pinned; a different one is recorded as a *pending
  change* and raises :class:`UntrustedIdentity`, and from then on the contact
  is refused (:meth:`IdentityTrust.refuse_pending`) until the user decides
  (:meth:`IdentityTrust.approve`), so the change is surfaced before the next send.
- **One key, one handle** (SPEC §13.8). A key already pinned for another
  handle raises :class:`IdentityKeyReused` before any cryptography, and pins
  nothing.
- **A published account's key is used only once the log proved it** (SPEC §15.6
  rule 5). A handle seen as published — a business, by the kind the relay states
  in a DELIVER or a bundle or by a PROFILE, or a bundle with a log proof — is marked so for good
  (:meth:`IdentityTrust.note_published`); a key pinned for it that no log proof
  covered (one that came in a prekey message, a first one or a change) is
  :meth:`IdentityTrust.unlogged_key`, and :meth:`IdentityTrust.refuse_unlogged`
  keeps anything from being encrypted to it until ``logcheck`` proves it. What the
  relay labels an unpublished user at first contact is taken as one: the limit of
  this check (docs/threat-model.md, T27).
- **The relay key is pinned** (SPEC §4.1) at the first login; a relay
  presenting another key is :class:`RelayKeyChanged` until the user accepts it
  (:meth:`RelayKeyPin.accept`).
- **Safety numbers** (SPEC §13.9) are what the user compares out of band;
  while a change is pending, the number of the *new* key.

Not here: sessions and cryptography (``sessions``), where the pins are stored
(``keystore``), what happens to a contact's messages while a change is pending
(``inbox``).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import NoReturn

from blindrelay.protocol.crypto.fingerprint import safety_number
from blindrelay.protocol.errors import (
    BlindrelayError,
    IdentityKeyReused,
    KeyNotLogged,
    UntrustedIdentity,
)

from .keystore import IdentityStatus, KeyStore


class RelayKeyChanged(BlindrelayError):
    """The relay presents another key than the one pinned for this profile.

    Raised from :meth:`Client.connect` (and by every waiting call once a
    reconnect meets it) as soon as HELLO shows the key, before anything is
    sent or acknowledged on that connection. The relay key is what our
    statements are bound to (SPEC §7.4) and what the relay signs nothing
    without: a new key means a new operator key pair, or someone else
    answering at the relay's address. Only a person who learnt the new key
    out of band should accept it, with :meth:`Client.accept_relay_key`.
    A client-side error: no wire code.
    """

    def __init__(self, pinned: bytes, presented: bytes) -> None:
        super().__init__(
            f"the relay presents key {presented.hex()}, not the key {pinned.hex()} pinned "
            "for this profile"
        )
        self.pinned = pinned
        self.presented = presented


class RelayKeyPin:
    """The relay key this profile trusts (SPEC §4.1), kept in the keystore."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store

    @property
    def key(self) -> bytes | None:
        """The pinned key; None before the first login."""
        return self._store.relay_key()

    def check(self, presented: bytes) -> None:
        """SPEC §4.1: "a client MUST NOT send anything on a connection whose HELLO presents
        another relay key than the one it pinned, until its user accepts the new key"."""
        pinned = self.key
        if pinned is not None and pinned != presented:
            raise RelayKeyChanged(pinned, presented)

    def pin_first(self, key: bytes) -> None:
        """Pin ``key`` unless a key is pinned already: the first login does."""
        if self.key is None:
            self._store.set_relay_key(key)

    def accept(self, key: bytes) -> None:
        """Pin ``key`` in place of the current one: the user's deliberate decision.

        Statements are bound to the relay key (SPEC §7.4): the ones we hold stay
        verifiable only against the key they name, and new ones name this one. The tree
        head kept is dropped: signed by the old key, it is no history of this one's log,
        and every head held against it failed (InvalidTreeHead) for good.
        """
        if not isinstance(key, bytes) or len(key) != 32:
            raise ValueError("a relay key is 32 bytes")
        if key != self.key:
            self._store.set_tree_head(None)
        self._store.set_relay_key(key)


class IdentityState(StrEnum):
    """How far a contact's identity key is trusted when a message arrives (SPEC §3.3)."""

    NEW = "new"
    """First contact: this message pinned the key (trust on first use)."""
    TRUSTED = "trusted"
    """The pinned key, not compared out of band."""
    VERIFIED = "verified"
    """The pinned key, and the user compared safety numbers (SPEC §13.9)."""
    UNLOGGED = "unlogged"
    """A published account's key (a business's) that came in its message and that the
    relay's log has not proven yet (SPEC §15.6): it may be a key of the relay's own.
    The first reply asks the log first and raises KeyNotLogged if it fails."""


class IdentityTrust:
    """Our contacts' identity keys: pinned, pending a change, approved (module docstring)."""

    def __init__(self, store: KeyStore, *, clock: Callable[[], int]) -> None:
        self._store = store
        self._clock = clock

    def pending_change(self, handle: str) -> bytes | None:
        """The new identity key ``handle`` presented and the user has not approved yet."""
        return self._store.pending_identity_change(handle)

    def refuse_pending(self, handle: str) -> None:
        """Raise UntrustedIdentity while a change of ``handle``'s key awaits the user."""
        if self.pending_change(handle) is not None:
            raise UntrustedIdentity(handle)

    def check(self, handle: str, identity_key: bytes) -> None:
        """The one check of a key ``handle`` presents, before it is used for anything.

        Raises IdentityKeyReused for a key pinned for another handle (SPEC
        §13.8), UntrustedIdentity while a change is pending, and for a key
        other than the pinned one, which it records as the pending change
        (SPEC §3.3). Returns for the pinned key or a first one, which the
        caller :meth:`record` s once it used it.
        """
        if self.is_change(handle, identity_key):
            self.record_change(handle, identity_key)

    def is_change(self, handle: str, identity_key: bytes) -> bool:
        """:meth:`check` without recording: raises as it does, but returns True for a key
        other than the pinned one, which the caller records (:meth:`record_change`) once
        it knows the key is the sender's — a prekey message's, once it decrypted under
        it (SPEC §13.8, T67)."""
        owner = self._store.identity_owner(identity_key)
        if owner is not None and owner != handle:
            raise IdentityKeyReused(handle, owner)
        self.refuse_pending(handle)
        return self._store.check_identity(handle, identity_key) is IdentityStatus.CHANGED

    def record_change(self, handle: str, identity_key: bytes) -> NoReturn:
        """Record ``identity_key`` as ``handle``'s pending change and raise
        UntrustedIdentity: the person decides (SPEC §3.3)."""
        self._store.record_identity_change(handle, identity_key)
        raise UntrustedIdentity(handle)

    def record(self, handle: str, identity_key: bytes) -> IdentityStatus:
        """Pin a key that passed :meth:`check` (first use), or note it seen; NEW or TRUSTED."""
        return self._store.trust_identity(handle, identity_key, self._clock())

    def pin(self, handle: str, identity_key: bytes) -> IdentityStatus:
        """:meth:`check`, then :meth:`record`: for a key that needs no session to be used."""
        self.check(handle, identity_key)
        return self.record(handle, identity_key)

    def pinned_key(self, handle: str) -> bytes | None:
        """The key pinned for ``handle`` (the trusted one, not a pending change)."""
        trusted = self._store.get_trusted_identity(handle)
        return trusted.identity_key if trusted is not None else None

    def approve(self, handle: str, *, verified: bool = False) -> None:
        """The user's decision: trust the pending new key (or mark the pinned one verified).

        Approving a change drops the session built on the old key; the next
        send fetches a fresh bundle, and the contact's next prekey message
        starts a session under the new key.
        """
        new_key = self.pending_change(handle)
        if new_key is not None:
            self._store.approve_identity(handle, new_key, self._clock(), verified=verified)
            self._store.delete_session(handle)
            self._store.clear_identity_change(handle)
            return
        key = self.pinned_key(handle)
        if key is None:
            raise KeyError(f"no identity key known for {handle!r}")
        self._store.approve_identity(handle, key, self._clock(), verified=verified)

    def state(self, handle: str) -> IdentityState | None:
        """VERIFIED, UNLOGGED or TRUSTED for a pinned key, None for a stranger."""
        trusted = self._store.get_trusted_identity(handle)
        if trusted is None:
            return None
        if trusted.verified:
            return IdentityState.VERIFIED
        if self.unlogged_key(handle, trusted.identity_key) is not None:
            return IdentityState.UNLOGGED
        return IdentityState.TRUSTED

    # --- Published accounts: a key only with a log proof (SPEC §15.6 rule 5) ----------

    def note_published(self, handle: str) -> None:
        """``handle`` is a published account (the relay said business, or proved its key
        logged): from now on every key of it needs a log proof, whatever the relay says."""
        self._store.mark_published(handle)

    def unlogged_key(self, handle: str, key: bytes | None = None) -> bytes | None:
        """``key`` (by default the pinned one) if ``handle`` is published and no log proof
        covered that key; None otherwise."""
        if not self._store.is_published(handle):
            return None
        if key is None:
            key = self.pinned_key(handle)
        if key is None or key == self._store.logged_key(handle):
            return None
        return key

    def refuse_unlogged(self, handle: str, key: bytes | None = None) -> None:
        """Raise KeyNotLogged for a published account's key no log proof covered."""
        if self.unlogged_key(handle, key) is not None:
            raise KeyNotLogged(handle, "the log has not proven the key its message came with")

    def safety_number(self, handle: str) -> str:
        """The 60 digits to compare with ``handle`` (SPEC §13.9).

        While a change is pending it is the number of the *new* key: the one
        the user should compare before approving it.
        """
        key = self.pending_change(handle) or self.pinned_key(handle)
        if key is None:
            raise KeyError(f"no identity key known for {handle!r}")
        ours = self._store.get_identity()
        if ours is None:
            raise RuntimeError("this profile has no identity yet; register first")
        return safety_number(ours.handle, ours.identity_public, handle, key)


__all__ = ["IdentityState", "IdentityTrust", "RelayKeyChanged", "RelayKeyPin"]
