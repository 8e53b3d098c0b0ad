"""Sessions: X3DH + Double Ratchet + padding + the envelope the relay carries (SPEC §13.6).

The envelope is the opaque ciphertext body of a SEND frame. Byte layout
(integers big-endian)::

    version            1   0x02 (0x01, before the handles were bound, is refused)
    type               1   0x01 prekey message | 0x02 message
    -- prekey messages only --
    identity_key      32   sender's Ed25519 identity public key (IK_A)
    base_key          32   sender's X3DH ephemeral X25519 public key (EK_A)
    signed_prekey_id   4   u32, recipient's signed prekey used
    has_one_time       1   0x00 | 0x01
    one_time_prekey_id 4   u32, only if has_one_time = 0x01
    -- all messages --
    header            40   ratchet key (32) || PN (u32) || N (u32)
    ciphertext         *   XChaCha20-Poly1305 of the padded plaintext || tag (16)

Until the initiator has decrypted a reply, every message it sends is a prekey
message (as Signal does), so the first messages may be lost or reordered and
any of them can start the session on the recipient's side.

Every function is pure: it returns a new :class:`Session` and leaves the one
passed in untouched, so a caller keeps the old state when an error is raised.

Sessions are made for a pair of handles (``our_handle``, ``their_handle``):
X3DH puts both in the associated data of every message (SPEC §13.3), so a
session only decrypts what was encrypted for that very pair.

Not owned here: storing sessions or prekeys and trusting identity keys
(``client/``); this module reports the sender's identity key
(:func:`peek_envelope`) so the client can check trust before accepting.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import msgpack

from blindrelay.protocol.crypto import ratchet as dr
from blindrelay.protocol.crypto import x3dh
from blindrelay.protocol.crypto.fastinit import positional_constructor
from blindrelay.protocol.crypto.keys import (
    KEY_LEN,
    IdentityKeyPair,
    OneTimePreKey,
    PreKeyBundle,
    Rng,
    SignedPreKey,
)
from blindrelay.protocol.crypto.padding import BUCKETS, pad, unpad
from blindrelay.protocol.errors import DecryptionFailed, InvalidKey, MalformedEnvelope

ENVELOPE_VERSION = 2
"""SPEC §13.6. Version 1 had no handles in AD: a first message of it re-sent by
another account decrypted as that account's, so it is refused, not accepted."""


class MessageType(IntEnum):
    """Envelope type byte (SPEC §13.6)."""

    PREKEY = 1
    MESSAGE = 2


_U32 = struct.Struct(">I")
PREKEY_PREFIX_MAX = 2 * KEY_LEN + 4 + 1 + 4
ENVELOPE_OVERHEAD_MAX = 2 + PREKEY_PREFIX_MAX + dr.HEADER_LEN + dr.AEAD_TAG_LEN
"""131 bytes: the most an envelope adds to its padded plaintext."""

_CIPHERTEXT_SIZES = frozenset(b + dr.AEAD_TAG_LEN for b in BUCKETS)
_SESSION_VERSION = 2
"""2: sessions of envelope version 2 (handles in AD). A version-1 record is
:class:`OutdatedSession`: its peer refuses what it would encrypt."""


class OutdatedSession(ValueError):
    """A stored session of an earlier envelope version: drop it and start anew (SPEC §13.7)."""


@dataclass(frozen=True, slots=True)
class EnvelopeInfo:
    """What can be read from an envelope without any key (SPEC §13.6)."""

    message_type: MessageType
    header: dr.Header
    ciphertext: bytes
    sender_identity_key: bytes | None = None
    base_key: bytes | None = None
    signed_prekey_id: int | None = None
    one_time_prekey_id: int | None = None


@dataclass(frozen=True, slots=True)
class PendingPreKey:
    """X3DH parameters repeated in each message until the peer replies."""

    signed_prekey_id: int
    one_time_prekey_id: int | None


@dataclass(frozen=True, slots=True)
class Session:
    """One end of a pairwise session. Immutable; persist with :meth:`to_bytes`."""

    our_identity_key: bytes
    their_identity_key: bytes
    associated_data: bytes
    base_key: bytes
    """EK_A of the X3DH run that created this session; names it on both sides."""
    ratchet: dr.RatchetState
    pending_prekey: PendingPreKey | None = None

    def to_bytes(self) -> bytes:
        """msgpack array; the keystore stores it sealed (SPEC §13.7)."""
        pending: list[Any] | None = None
        if self.pending_prekey is not None:
            pending = [self.pending_prekey.signed_prekey_id, self.pending_prekey.one_time_prekey_id]
        packed: bytes = msgpack.packb(
            [
                _SESSION_VERSION,
                self.our_identity_key,
                self.their_identity_key,
                self.associated_data,
                self.base_key,
                self.ratchet.to_list(),
                pending,
            ],
            use_bin_type=True,
        )
        return packed

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        try:
            version, ours, theirs, ad, base, ratchet_list, pending = msgpack.unpackb(
                data, raw=False, strict_map_key=True
            )
            if isinstance(version, int) and 0 < version < _SESSION_VERSION:
                raise OutdatedSession(f"session record of version {version}")
            if version != _SESSION_VERSION:
                raise ValueError(f"unknown session version {version!r}")
            for key in (ours, theirs, base):
                if not isinstance(key, bytes) or len(key) != KEY_LEN:
                    raise ValueError("identity/base key must be 32 bytes")
            if not isinstance(ad, bytes):
                raise ValueError("associated data must be bytes")
            pending_prekey = None
            if pending is not None:
                spk_id, otpk_id = pending
                pending_prekey = PendingPreKey(spk_id, otpk_id)
            return cls(
                ours, theirs, ad, base, dr.RatchetState.from_list(ratchet_list), pending_prekey
            )
        except OutdatedSession:
            raise
        except (TypeError, ValueError, msgpack.UnpackException) as exc:
            raise ValueError(f"malformed session record: {exc}") from exc


_MESSAGE_TYPES = {int(t): t for t in MessageType}
_MESSAGE_PREFIX = bytes((ENVELOPE_VERSION, MessageType.MESSAGE))
_MESSAGE_HEADER_END = 2 + dr.HEADER_LEN


_make_info = positional_constructor(EnvelopeInfo)
_make_session = positional_constructor(Session)


def _advanced(
    session: Session, ratchet: dr.RatchetState, pending_prekey: PendingPreKey | None
) -> Session:
    """``session`` after one message: the same pair and X3DH run, the ratchet moved on."""
    return _make_session(
        session.our_identity_key,
        session.their_identity_key,
        session.associated_data,
        session.base_key,
        ratchet,
        pending_prekey,
    )


def peek_envelope(envelope: bytes) -> EnvelopeInfo:
    """Parse an envelope without keys; MalformedEnvelope if it is not one.

    Strict: known version and type, exact prefix, ciphertext length of a
    padding bucket plus the tag.
    """
    if envelope.startswith(_MESSAGE_PREFIX) and len(envelope) >= _MESSAGE_HEADER_END:
        # The common case, a normal message: fixed offsets, no prekey fields.
        ciphertext = envelope[_MESSAGE_HEADER_END:]
        if len(ciphertext) not in _CIPHERTEXT_SIZES:
            raise MalformedEnvelope(f"ciphertext of {len(ciphertext)} bytes is not a padded size")
        header = dr.Header.decode_at(envelope, 2)
        return _make_info(MessageType.MESSAGE, header, ciphertext, None, None, None, None)
    if len(envelope) < 2:
        raise MalformedEnvelope("envelope too short")
    if envelope[0] != ENVELOPE_VERSION:
        raise MalformedEnvelope(f"unsupported envelope version {envelope[0]}")
    message_type = _MESSAGE_TYPES.get(envelope[1])
    if message_type is None:
        raise MalformedEnvelope(f"unknown envelope type {envelope[1]}")
    offset = 2
    fields: dict[str, Any] = {}
    if message_type is MessageType.PREKEY:
        if len(envelope) < offset + 2 * KEY_LEN + 5:
            raise MalformedEnvelope("prekey prefix truncated")
        fields["sender_identity_key"] = envelope[offset : offset + KEY_LEN]
        fields["base_key"] = envelope[offset + KEY_LEN : offset + 2 * KEY_LEN]
        offset += 2 * KEY_LEN
        (fields["signed_prekey_id"],) = _U32.unpack_from(envelope, offset)
        flag = envelope[offset + 4]
        offset += 5
        if flag == 1:
            if len(envelope) < offset + 4:
                raise MalformedEnvelope("one-time prekey id truncated")
            (fields["one_time_prekey_id"],) = _U32.unpack_from(envelope, offset)
            offset += 4
        elif flag != 0:
            raise MalformedEnvelope("one-time prekey flag must be 0 or 1")
    header = dr.Header.decode(envelope[offset : offset + dr.HEADER_LEN])
    ciphertext = envelope[offset + dr.HEADER_LEN :]
    if len(ciphertext) not in _CIPHERTEXT_SIZES:
        raise MalformedEnvelope(f"ciphertext of {len(ciphertext)} bytes is not a padded size")
    return EnvelopeInfo(message_type, header, ciphertext, **fields)


def encode_envelope(
    header: dr.Header,
    ciphertext: bytes,
    prekey: tuple[bytes, bytes, PendingPreKey] | None = None,
) -> bytes:
    """Lay out an envelope; ``prekey`` is (identity key, base key, prekey ids)."""
    if prekey is None:
        return _MESSAGE_PREFIX + header.encode() + ciphertext
    identity_key, base_key, ids = prekey
    prefix = bytes((ENVELOPE_VERSION, MessageType.PREKEY)) + identity_key + base_key
    prefix += _U32.pack(ids.signed_prekey_id)
    if ids.one_time_prekey_id is None:
        prefix += b"\x00"
    else:
        prefix += b"\x01" + _U32.pack(ids.one_time_prekey_id)
    return prefix + header.encode() + ciphertext


def initiate_session(
    our_identity: IdentityKeyPair,
    their_bundle: PreKeyBundle,
    rng: Rng,
    *,
    our_handle: str,
    their_handle: str,
) -> Session:
    """Start a session with ``their_handle`` from its bundle (X3DH as initiator, SPEC §13.3).

    Draws the X3DH ephemeral key, then the first ratchet key, from ``rng``.
    Raises InvalidSignature / InvalidKey for a bad bundle.
    """
    agreement = x3dh.initiate(
        our_identity, their_bundle, rng, our_handle=our_handle, their_handle=their_handle
    )
    state = dr.initialize_initiator(
        agreement.shared_secret, agreement.their_signed_prekey_public, rng
    )
    return Session(
        our_identity_key=our_identity.public,
        their_identity_key=their_bundle.identity_key,
        associated_data=agreement.associated_data,
        base_key=agreement.ephemeral_public,
        ratchet=state,
        pending_prekey=PendingPreKey(agreement.signed_prekey_id, agreement.one_time_prekey_id),
    )


def encrypt(session: Session, plaintext: bytes, rng: Rng) -> tuple[Session, bytes]:
    """Pad, encrypt and frame one message → (new session, envelope).

    ``rng`` is accepted for a stable signature but not drawn from: in the Double
    Ratchet only receiving creates keys. Raises PlaintextTooLarge.
    """
    del rng
    state, header, ciphertext = dr.encrypt(session.ratchet, pad(plaintext), session.associated_data)
    prekey = None
    if session.pending_prekey is not None:
        prekey = (session.our_identity_key, session.base_key, session.pending_prekey)
    return _advanced(session, state, session.pending_prekey), encode_envelope(
        header, ciphertext, prekey
    )


def belongs_to(session: Session, info: EnvelopeInfo) -> bool:
    """Whether ``decrypt`` can use ``session`` for this envelope.

    A normal message always goes to the current session; a prekey message only
    if it repeats the X3DH run of this session (same sender and base key);
    otherwise it starts a new session through :func:`accept_session`.
    """
    if info.message_type is MessageType.MESSAGE:
        return True
    return (
        info.base_key == session.base_key and info.sender_identity_key == session.their_identity_key
    )


def decrypt(session: Session, envelope: bytes, rng: Rng) -> tuple[Session, bytes]:
    """Decrypt an envelope of an established session → (new session, plaintext).

    ``rng`` supplies the new ratchet key when the peer's ratchet key changed.
    Errors leave ``session`` valid and unchanged: MalformedEnvelope,
    DecryptionFailed, DuplicatedMessage, TooManySkippedMessages, InvalidKey.
    """
    info = peek_envelope(envelope)
    if not belongs_to(session, info):
        raise DecryptionFailed("prekey message of another session; use accept_session")
    state, padded = dr.decrypt(
        session.ratchet, info.header, info.ciphertext, session.associated_data, rng
    )
    plaintext = unpad(padded)
    # A decrypted reply proves the peer has the session: stop repeating the X3DH part.
    return _advanced(session, state, None), plaintext


def without_skipped_keys(session: Session) -> Session:
    """``session`` keeping none of its skipped message keys: what a client's bound on the
    skipped keys of all its sessions leaves of one (SPEC §13.4). A message whose key went
    is refused as one whose key was dropped (DuplicatedMessage); the rest flow on."""
    return replace(session, ratchet=replace(session.ratchet, skipped={}))


def accept_session(
    our_identity: IdentityKeyPair,
    envelope: bytes,
    lookup_signed_prekey: Callable[[int], SignedPreKey | None],
    lookup_one_time_prekey: Callable[[int], OneTimePreKey | None],
    rng: Rng,
    *,
    our_handle: str,
    their_handle: str,
) -> tuple[Session, bytes, int | None]:
    """Create a session from a prekey message (X3DH as recipient, SPEC §13.3).

    ``their_handle`` is the sender the relay named (the DELIVER's ``sender``):
    a message made for another pair of handles fails as DecryptionFailed.
    Returns (session, plaintext, id of the one-time prekey used or None); the
    caller MUST delete that one-time prekey once it has stored the session, so
    a replay of the envelope fails with InvalidKey (unknown prekey). Without a
    one-time prekey a replay is not detectable here (SPEC §13.3).
    """
    info = peek_envelope(envelope)
    if info.message_type is not MessageType.PREKEY:
        raise DecryptionFailed("not a prekey message")
    their_identity, base_key, spk_id = (
        info.sender_identity_key,
        info.base_key,
        info.signed_prekey_id,
    )
    if their_identity is None or base_key is None or spk_id is None:  # pragma: no cover
        raise MalformedEnvelope("prekey fields missing")
    signed_prekey = lookup_signed_prekey(spk_id)
    if signed_prekey is None:
        raise InvalidKey(f"unknown signed prekey {spk_id}")
    one_time = None
    if info.one_time_prekey_id is not None:
        one_time = lookup_one_time_prekey(info.one_time_prekey_id)
        if one_time is None:
            raise InvalidKey(f"unknown or used one-time prekey {info.one_time_prekey_id}")
    secret, associated_data = x3dh.respond(
        our_identity,
        signed_prekey.keypair,
        one_time.keypair if one_time is not None else None,
        their_identity,
        base_key,
        our_handle=our_handle,
        their_handle=their_handle,
    )
    state = dr.initialize_recipient(secret, signed_prekey.keypair)
    state, padded = dr.decrypt(state, info.header, info.ciphertext, associated_data, rng)
    plaintext = unpad(padded)
    session = Session(
        our_identity_key=our_identity.public,
        their_identity_key=their_identity,
        associated_data=associated_data,
        base_key=base_key,
        ratchet=state,
    )
    return session, plaintext, info.one_time_prekey_id
