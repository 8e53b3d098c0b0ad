"""Key custody meets crypto: sessions, prekeys and trust for one account, without I/O.

:class:`SessionManager` turns frames into keystore writes and back: it makes
our identity and prekeys (SPEC §5), starts sessions from BUNDLE frames (SPEC
§5.3, §13.3), encrypts content to a contact and decrypts a DELIVER (SPEC §6.4,
§13.6). Its rules:

- **Every key a contact presents is checked first** (SPEC §3.3, §13.8): a
  bundle's or a prekey message's identity key goes through
  :meth:`IdentityTrust.check` (``trust``) before any cryptography, and
  :meth:`SessionManager.encrypt` refuses a contact whose key change awaits the
  user; a prekey message's new key is the pending change only once the message
  decrypted under it (T67). Both ends' handles are in every message's associated data
  (SPEC §13.3), so an envelope re-sent by another account does not decrypt.
- **Nothing is encrypted to a published account's key the log has not proven**
  (SPEC §15.6 rule 5): a DELIVER from a business marks its sender published
  (``trust``); a key such a sender pinned by its prekey message is reported
  ``unlogged`` on its messages, and :meth:`SessionManager.encrypt` refuses it
  (KeyNotLogged) until ``logcheck`` proves it — ``sending`` asks the log first.
- **Persist before acknowledging** (SPEC §6.5). :meth:`SessionManager.receive`
  returns only after :meth:`KeyStore.commit_incoming` stored the message, the
  new session and the message id in one transaction — which also deletes the
  one-time prekey a prekey message used, so a crash on either side of the
  commit loses nothing. The caller acks after it returns.
- **Dedup by (sender, msg_id)** (SPEC §6.4.3: "Clients MUST therefore
  deduplicate by ``(sender, msg_id)``"). A processed pair is dropped before
  any decryption (a replayed envelope would fail the ratchet anyway). Senders
  choose their ids, so one sender reusing another's id must not make us drop
  the other's message.
- **The relay cannot relabel a message** (SPEC §13.11 rule 4): content whose id or
  labels (intent, category, categories) differ from the DELIVER's is refused —
  recorded, acknowledged, never shown — so a service reply never reads as a
  consent request, nor a utility notification as a marketing one.
- **Encrypt-then-store before the envelope leaves**: the advanced sending
  chain is stored before :meth:`SessionManager.encrypt` returns, so no message
  key is ever used twice, even across a crash.
- **Skipped message keys have one budget for all sessions** (SPEC §13.4): a
  message's session is committed through ``skipped_keys``, which notes the keys it
  did not hold in that transaction and rewrites without theirs the sessions the budget
  drops (strangers' first, or expired) in that transaction too.

Not here: trust decisions (``trust``), sockets, retries and the outbox
(``link``, ``outbox``), storage (``keystore``), the decoded sessions kept in memory
(``session_cache``), the inbox row's format (``incoming``), the maths
(``blindrelay.protocol.crypto``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

from blindrelay.protocol import frames, limits
from blindrelay.protocol.content import MalformedContent
from blindrelay.protocol.crypto.keys import (
    IdentityKeyPair,
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
    X25519KeyPair,
    signature_valid,
    signed_prekey_message,
)
from blindrelay.protocol.crypto.ratchet import SkippedKeys
from blindrelay.protocol.crypto.session import (
    MessageType,
    OutdatedSession,
    Session,
    accept_session,
    belongs_to,
    decrypt,
    encrypt,
    initiate_session,
    peek_envelope,
)
from blindrelay.protocol.errors import DecryptionFailed

from .incoming import Incoming, content_of, inbox_record
from .keystore import (
    AccountKind,
    IdentityStatus,
    IncomingMessage,
    KeyStore,
    OneTimePreKeyRecord,
    OurIdentity,
    SignedPreKeyRecord,
)
from .session_cache import SessionCache
from .skipped_keys import SkippedKeyBudget
from .trust import IdentityState, IdentityTrust

Rng = Callable[[int], bytes]
Clock = Callable[[], int]
"""Wall clock in Unix milliseconds."""

ONE_TIME_PREKEY_TARGET = limits.MAX_PREKEYS_PER_UPLOAD
"""One-time prekeys we keep published: one upload frame's worth, five times the
relay's low-water mark, so a burst of first contacts between two top-ups
rarely falls back to X3DH without DH4 (SPEC §5.4, §13.3)."""

TOP_UP_BELOW = ONE_TIME_PREKEY_TARGET // 2
"""Top up when the relay holds fewer than this; above it, an upload would cost
a round trip for little gain. PREKEYS_LOW (below 20) always triggers one."""

DAY_MS = 24 * 3600 * 1000

SIGNED_PREKEY_ROTATION_MS = 7 * DAY_MS
"""A new signed prekey once the current one is this old, checked at each login (X3DH
§3.2, §4.6; a week, as Signal's clients do). A first message sent without a one-time
prekey rests on the signed prekey alone (SPEC §13.3): its forward secrecy starts when
that key's private half is deleted, and until then it can be replayed."""

SIGNED_PREKEY_GRACE_MS = limits.QUEUE_TTL_MS + DAY_MS
"""How long a retired signed prekey's private key is kept after the relay took its
successor: a first message sent to it just before may wait in our queue for
``QUEUE_TTL_MS`` (SPEC §6.3), plus a day for the relay's clock against ours."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class NoSession(LookupError):
    """No session with this contact yet: fetch a bundle and :meth:`start_session`."""


class _Decrypted(NamedTuple):
    session: Session
    """The session after the message, not yet stored."""
    plaintext: bytes
    used_one_time_prekey: int | None
    status: IdentityStatus
    """NEW if the message made us pin its sender's key."""
    started: bool
    """A prekey message that started a new session (not stored yet)."""
    skipped_before: SkippedKeys
    """The skipped keys of the session stored for the sender before this message."""


class SessionManager:
    """One account's end-to-end state over a :class:`KeyStore` (see the module docstring)."""

    def __init__(
        self, store: KeyStore, *, rng: Rng = os.urandom, clock: Clock = wall_clock_ms
    ) -> None:
        self.store = store
        self.trust = IdentityTrust(store, clock=clock)
        """Our contacts' identity keys: every key a bundle or message presents is checked."""
        self._rng = rng
        self._clock = clock
        self._keypair: IdentityKeyPair | None = None
        self._decoded = SessionCache()
        self._skipped = SkippedKeyBudget(store, clock, self._decoded)

    # --- Our identity and prekeys (SPEC §3.1, §5) ----------------------------

    def create_identity(self, handle: str, kind: AccountKind, relay_url: str = "") -> OurIdentity:
        """Generate and store our Ed25519 identity; refuses to replace an existing one."""
        if self.store.get_identity() is not None:
            raise RuntimeError("this profile already has an identity")
        keypair = IdentityKeyPair.generate(self._rng)
        identity = OurIdentity(handle, kind, relay_url, keypair.seed, keypair.public)
        self.store.set_identity(identity)
        self._keypair = keypair
        return identity

    @property
    def identity(self) -> OurIdentity:
        identity = self.store.get_identity()
        if identity is None:
            raise RuntimeError("this profile has no identity yet; register first")
        return identity

    @property
    def keypair(self) -> IdentityKeyPair:
        if self._keypair is None:
            self._keypair = IdentityKeyPair.from_seed(self.identity.identity_seed)
        return self._keypair

    def sign(self, message: bytes) -> bytes:
        """Sign with our identity key (the authentication transcript, SPEC §4.2–4.3)."""
        return self.keypair.sign(message)

    def prekeys_upload(
        self, request_id: int, *, relay_one_time: int, relay_has_signed: bool
    ) -> frames.PrekeysUpload | None:
        """The PREKEYS_UPLOAD that tops the relay up, or None if it holds enough.

        ``relay_one_time`` and ``relay_has_signed`` come from WELCOME or
        PREKEYS_LOW (SPEC §5.4). New private keys are stored before the frame
        exists, so the relay never publishes a key we cannot use. Our signed prekey
        is rotated here (SPEC §13.3): a new one when the current is
        :data:`SIGNED_PREKEY_ROTATION_MS` old, sent until the relay took it
        (:meth:`signed_prekey_published`); a retired one is deleted
        :data:`SIGNED_PREKEY_GRACE_MS` after the relay took its successor.
        """
        self._delete_retired_signed_prekeys()
        self._skipped.expire()
        record = self.store.current_signed_prekey()
        if record is None or self._clock() - record.created_at_ms >= SIGNED_PREKEY_ROTATION_MS:
            if record is not None and self.store.published_signed_prekey() is None:
                # A profile from before rotation: the relay serves the current one.
                self.store.mark_signed_prekey_published(record.key_id, self._clock())
            record = self._new_signed_prekey()
        published = self.store.published_signed_prekey()
        signed: frames.SignedPreKeyRecord | None = None
        if not relay_has_signed or (published is not None and published != record.key_id):
            signed = frames.SignedPreKeyRecord(record.key_id, record.public_key, record.signature)
        one_time: tuple[frames.OneTimePreKeyRecord, ...] = ()
        if relay_one_time < TOP_UP_BELOW:
            count = min(ONE_TIME_PREKEY_TARGET - relay_one_time, limits.MAX_PREKEYS_PER_UPLOAD)
            one_time = tuple(
                frames.OneTimePreKeyRecord(r.key_id, r.public_key)
                for r in self._new_one_time_prekeys(count)
            )
        if signed is None and not one_time:
            return None
        return frames.PrekeysUpload(id=request_id, signed_prekey=signed, one_time=one_time)

    def signed_prekey_published(self, key_id: int) -> None:
        """The relay answered OK to an upload of signed prekey ``key_id``: it serves that
        one now, and the others are retired from this moment (their grace starts)."""
        if self.store.load_signed_prekey(key_id) is not None:
            self.store.mark_signed_prekey_published(key_id, self._clock())

    def _delete_retired_signed_prekeys(self) -> None:
        """Delete the private key of each signed prekey retired more than the grace period
        ago, and of any not signed by our identity key (left by an identity rotation of an
        older SDK): no first message can be read with it any more."""
        now = self._clock()
        current = self.store.current_signed_prekey()
        keep = {self.store.published_signed_prekey()}
        if current is not None:
            keep.add(current.key_id)
        retired = self.store.retired_signed_prekeys()
        ours = self.keypair.public
        for record in self.store.signed_prekeys():
            if record.key_id in keep:
                continue
            retired_at = retired.get(record.key_id)
            expired = retired_at is not None and now - retired_at >= SIGNED_PREKEY_GRACE_MS
            signed = signed_prekey_message(record.public_key)
            if expired or not signature_valid(ours, signed, record.signature):
                self.store.remove_signed_prekey(record.key_id)

    def replace_identity(self, keypair: IdentityKeyPair) -> None:
        """Adopt a rotated identity key (SPEC §3.4) and sign a new prekey with it.

        The relay deleted our prekeys when it accepted the rotation, so no first
        message is started on them any more, and one still queued was encrypted to
        the old identity key (in DH2 and the AD, SPEC §13.3) and cannot be read
        under the new one: every prekey private key of the old key is deleted at
        once. The next :meth:`prekeys_upload` with ``relay_has_signed=False``
        publishes the new signed prekey and a full supply of one-time prekeys.
        """
        current = self.identity
        try:
            with self.store.atomic():
                self.store.set_identity(
                    OurIdentity(
                        current.handle, current.account_kind, current.relay_url,
                        keypair.seed, keypair.public,
                    )
                )  # fmt: skip
                for record in self.store.signed_prekeys():
                    self.store.remove_signed_prekey(record.key_id)
                self.store.remove_one_time_prekeys(self.store.one_time_prekey_ids())
                self._keypair = keypair
                self._new_signed_prekey()
        except BaseException:
            self._keypair = None  # read again from the store, as it was
            raise

    def _new_signed_prekey(self) -> SignedPreKeyRecord:
        (key_id,) = self.store.allocate_prekey_ids(1)
        prekey = SignedPreKey.generate(self.keypair, key_id, self._rng)
        record = SignedPreKeyRecord(
            key_id, prekey.keypair.private, prekey.public, prekey.signature, self._clock()
        )
        self.store.store_signed_prekey(record)
        self.store.set_current_signed_prekey(key_id)
        return record

    def _new_one_time_prekeys(self, count: int) -> list[OneTimePreKeyRecord]:
        records = []
        for key_id in self.store.allocate_prekey_ids(count):
            pair = X25519KeyPair.generate(self._rng)
            records.append(OneTimePreKeyRecord(key_id, pair.private, pair.public))
        self.store.store_one_time_prekeys(records)
        return records

    # --- Sessions (SPEC §13.3, §13.6) ----------------------------------------

    def has_session(self, handle: str) -> bool:
        """Whether a session with ``handle`` exists under our current identity key."""
        return self._load_own_session(handle) is not None

    def _load_own_session(self, handle: str) -> Session | None:
        # A session made under an identity key we rotated away (SPEC §3.4) is
        # not used to send: the peer must learn our new key from a prekey message.
        session = self._load_session(handle)
        if session is None or session.our_identity_key != self.keypair.public:  # we sign with it
            return None
        return session

    def _load_session(self, handle: str) -> Session | None:
        """The stored session with ``handle``; None also for one of an earlier envelope
        version, which the next bundle or prekey message replaces (SPEC §13.7)."""
        blob = self.store.load_session(handle)
        if blob is None:
            return None
        session = self._decoded.get(handle, blob)
        if session is not None:
            return session
        try:
            session = Session.from_bytes(blob)
        except OutdatedSession:
            return None
        self._decoded.put(handle, blob, session)
        return session

    def start_session(self, bundle: frames.Bundle) -> IdentityStatus:
        """Start a session from a fetched BUNDLE; returns NEW or TRUSTED.

        SPEC §13.3: the signed prekey's signature is verified first (a bad
        bundle raises InvalidSignature and pins nothing); a key pinned for
        another handle raises IdentityKeyReused (SPEC §13.8); a key other than
        the pinned one raises UntrustedIdentity and is remembered as pending.
        """
        handle = bundle.handle
        one_time = bundle.one_time
        prekey_bundle = PreKeyBundle(
            identity_key=bundle.identity_key,
            signed_prekey_id=bundle.signed_prekey.key_id,
            signed_prekey_public=bundle.signed_prekey.public,
            signed_prekey_signature=bundle.signed_prekey.signature,
            one_time_prekey_id=one_time.key_id if one_time is not None else None,
            one_time_prekey_public=one_time.public if one_time is not None else None,
        )
        prekey_bundle.verify()
        self.trust.check(handle, bundle.identity_key)
        session = initiate_session(
            self.keypair,
            prekey_bundle,
            self._rng,
            our_handle=self.identity.handle,
            their_handle=handle,
        )
        status = self.trust.record(handle, bundle.identity_key)
        blob = session.to_bytes()
        self.store.store_session(handle, blob)
        self._decoded.put(handle, blob, session)
        return status

    def encrypt(self, handle: str, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` to ``handle`` → envelope; the new session is stored first.

        Raises UntrustedIdentity while a key change is pending (SPEC §3.3:
        surfaced "before the next message is sent"), NoSession without one,
        KeyNotLogged for a published account's key no log proof covered (SPEC §15.6).
        """
        self.trust.refuse_pending(handle)
        session = self._load_own_session(handle)
        if session is None:
            raise NoSession(handle)
        self.store.require_trusted(handle, session.their_identity_key)
        self.trust.refuse_unlogged(handle, session.their_identity_key)
        session, envelope = encrypt(session, plaintext, self._rng)
        blob = session.to_bytes()
        self.store.store_session(handle, blob)
        self._decoded.put(handle, blob, session)
        return envelope

    def receive(self, deliver: frames.Deliver) -> Incoming | None:
        """Decrypt and persist one DELIVER; None for an already processed one.

        When it returns, the delivery may be acknowledged (SPEC §6.5). Raises
        UntrustedIdentity (pending change recorded; do not ack — the message
        waits for the user's decision), MalformedContent (content refused — malformed, or
        its id or labels differ from the frame's, SPEC §13.11 rule 4 —; session advanced
        and id recorded, nothing to show; ack), or a DecryptionFailed /
        DuplicatedMessage / TooManySkippedMessages / InvalidKey /
        IdentityKeyReused for an envelope that can never be decrypted or shown
        (nothing changed; ack and drop).
        """
        if self.store.is_processed(deliver.sender, deliver.msg_id):
            return None
        sender = deliver.sender
        if deliver.sender_kind == frames.AccountKind.BUSINESS:
            self.trust.note_published(sender)  # for good, whatever the relay says later
        decrypted = self._decrypt(deliver)
        identity = self._identity_state(sender, decrypted.status)
        record = inbox_record(deliver, identity, self._clock(), decrypted.plaintext)
        try:
            content = content_of(decrypted.plaintext, deliver)
        except MalformedContent:
            self._refuse_content(record, decrypted)
            raise
        if not self._skipped.commit_incoming(
            record, decrypted.session, decrypted.skipped_before, decrypted.used_one_time_prekey
        ):
            return None
        return Incoming(
            deliver.msg_id, sender, deliver.sender_kind, deliver.intent, deliver.sent_at,
            identity, content, deliver.category, deliver.categories,
        )  # fmt: skip

    def _refuse_content(self, record: IncomingMessage, decrypted: _Decrypted) -> None:
        """Content refused after decryption: record the id (the caller acks) and show nothing.

        On its session the ratchet advanced and must stay advanced. A prekey message
        that started a session on the signed prekey alone starts nothing (SPEC §13.3):
        nothing tells it from a replay, which the relay can send under a fresh
        ``msg_id``, and a stale session must not replace the live one (the sender's
        next prekey message starts its session if it is real). One that used a
        one-time prekey is fresh (the key goes at the first commit): its session is
        kept and the key spent, so the envelope is read once.
        """
        sender = record.sender
        blob = decrypted.session.to_bytes()
        used = decrypted.used_one_time_prekey
        self._decoded.forget(sender)
        with self.store.atomic():
            live = self.store.load_session(sender)
            if self.store.commit_incoming(record, blob, used_one_time_prekey=used):
                if not (decrypted.started and used is None):
                    skipped = decrypted.session.ratchet.skipped
                    self._skipped.stored(sender, decrypted.skipped_before, skipped)
                elif live is None:
                    self.store.delete_session(sender)
                else:
                    self.store.store_session(sender, live)
            self.store.consume(sender, record.msg_id)

    def _decrypt(self, deliver: frames.Deliver) -> _Decrypted:
        """Decrypt ``deliver`` on its session, or on a new one if it is a prekey message
        that starts one — whose identity key is checked first (SPEC §3.3). Nothing is
        stored: the caller commits the session with the message."""
        sender = deliver.sender
        info = peek_envelope(deliver.body)
        session = self._load_session(sender)
        before: SkippedKeys = {} if session is None else session.ratchet.skipped
        if info.message_type is MessageType.PREKEY and (
            session is None or not belongs_to(session, info)
        ):
            their_key = info.sender_identity_key
            assert their_key is not None  # peek_envelope guarantees it for prekey messages
            changed = self.trust.is_change(sender, their_key)
            session, plaintext, used_one_time = accept_session(
                self.keypair,
                deliver.body,
                self._signed_prekey,
                self._one_time_prekey,
                self._rng,
                our_handle=self.identity.handle,
                their_handle=sender,
            )
            if changed:  # the message decrypted under it: its sender holds the key (T67)
                self.trust.record_change(sender, their_key)
            return _Decrypted(
                session, plaintext, used_one_time, self.trust.record(sender, their_key), True,
                before,
            )  # fmt: skip
        if session is None:
            raise DecryptionFailed(f"no session with {sender!r}")
        self.trust.refuse_pending(sender)
        session, plaintext = decrypt(session, deliver.body, self._rng)
        return _Decrypted(session, plaintext, None, IdentityStatus.TRUSTED, False, before)

    def _identity_state(self, sender: str, status: IdentityStatus) -> IdentityState:
        """How far the sender's key is trusted, as its messages report it: UNLOGGED for a
        published sender's key no log proof covered yet (unless the user verified it)."""
        trusted = self.store.get_trusted_identity(sender)
        if trusted is not None and trusted.verified:
            return IdentityState.VERIFIED
        if trusted is not None and self.trust.unlogged_key(sender, trusted.identity_key):
            return IdentityState.UNLOGGED
        return IdentityState.NEW if status is IdentityStatus.NEW else IdentityState.TRUSTED

    def _signed_prekey(self, key_id: int) -> SignedPreKey | None:
        record = self.store.load_signed_prekey(key_id) if key_id > 0 else None
        if record is None:
            return None
        pair = X25519KeyPair.from_private(record.private_key)
        return SignedPreKey(record.key_id, pair, record.signature)

    def _one_time_prekey(self, key_id: int) -> OneTimePreKey | None:
        record = self.store.load_one_time_prekey(key_id) if key_id > 0 else None
        if record is None:
            return None
        return OneTimePreKey(record.key_id, X25519KeyPair.from_private(record.private_key))
