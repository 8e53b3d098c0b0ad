"""The Double Ratchet, exactly as Signal publishes it (SPEC §13.4).

https://signal.org/docs/specifications/doubleratchet/ with these parameters:

- ``KDF_RK(rk, dh_out) = HKDF(salt=rk, ikm=dh_out, info=b"blindrelay/v1/ratchet", 64)``
  split into (new root key, chain key);
- ``KDF_CK(ck)``: message key ``HMAC-SHA256(ck, 0x01)``, next chain key
  ``HMAC-SHA256(ck, 0x02)``;
- ``ENCRYPT(mk, pt, ad)``: ``HKDF(salt=32×0x00, ikm=mk, info=b"blindrelay/v1/message-keys", 56)``
  split into an XChaCha20-Poly1305 key (32) and nonce (24); associated data is
  ``AD || header`` with the 40-byte header of :class:`Header`.

State is immutable: :func:`encrypt` and :func:`decrypt` return a new
:class:`RatchetState` and never touch the old one, so a tampered, replayed or
otherwise failing message leaves the caller's state exactly as it was (the spec
asks for this: "changes to the state are discarded if decryption fails").

New ratchet key pairs are drawn from the injected ``rng`` when a message with a
new ratchet public key is received, as in the spec; sending draws nothing.

Not owned here: X3DH (:mod:`.x3dh`), padding and the envelope (:mod:`.session`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from blindrelay.protocol.crypto import libsodium
from blindrelay.protocol.crypto.fastinit import positional_constructor
from blindrelay.protocol.crypto.kdf import (
    HASH_LEN,
    INFO_MESSAGE_KEYS,
    INFO_RATCHET,
    hmac_sha256,
    hmac_sha256_keyed,
    hmac_sha256_pair,
)
from blindrelay.protocol.crypto.keys import KEY_LEN, Rng, X25519KeyPair
from blindrelay.protocol.errors import (
    DecryptionFailed,
    DuplicatedMessage,
    MalformedEnvelope,
    TooManySkippedMessages,
)

MAX_SKIPPED_KEYS = 1000
"""Skipped message keys kept per session; the oldest are dropped beyond this.
More tolerates longer loss/reordering; each kept key is a stored decryption
capability (weaker forward secrecy for those messages) and ~80 bytes of state.
1000 covers a day of heavy traffic arriving out of order."""

MAX_FORWARD_JUMP = 1000
"""Most message keys one incoming header may make us derive (the spec's
MAX_SKIP). Bounds the CPU one forged header can cost (each key is two HMACs)
and keeps one message from evicting the whole store; a sender that really
sent more than this unseen loses the session and must start a new one."""

MAX_RETIRED_RATCHET_KEYS = 8
"""Previous ratchet keys of the peer remembered only to name replays of
old-chain messages DuplicatedMessage instead of DecryptionFailed."""

CHAIN_MESSAGE_KEY_CONSTANT = b"\x01"
CHAIN_NEXT_KEY_CONSTANT = b"\x02"
AEAD_KEY_LEN = 32
AEAD_NONCE_LEN = 24
AEAD_TAG_LEN = 16
MESSAGE_KEY_SALT = bytes(HASH_LEN)

_HEADER_TAIL = struct.Struct(">II")
HEADER_LEN = KEY_LEN + _HEADER_TAIL.size
"""40 bytes: ratchet public key (32) || previous chain length (u32 BE) || n (u32 BE)."""

_MAX_U32 = 2**32 - 1
_STATE_VERSION = 1
_INFO_BLOCK_1 = INFO_MESSAGE_KEYS + b"\x01"
_INFO_BLOCK_2 = INFO_MESSAGE_KEYS + b"\x02"
_RK_INFO_BLOCK_1 = INFO_RATCHET + b"\x01"
_RK_INFO_BLOCK_2 = INFO_RATCHET + b"\x02"


@dataclass(frozen=True, slots=True)
class Header:
    """Double Ratchet header: ratchet key, PN, N (SPEC §13.4)."""

    ratchet_key: bytes
    previous_chain_length: int
    message_number: int

    def encode(self) -> bytes:
        return self.ratchet_key + _HEADER_TAIL.pack(self.previous_chain_length, self.message_number)

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) != HEADER_LEN:
            raise MalformedEnvelope("ratchet header must be 40 bytes")
        pn, n = _HEADER_TAIL.unpack_from(data, KEY_LEN)
        return cls(bytes(data[:KEY_LEN]), pn, n)

    @staticmethod
    def decode_at(data: bytes, offset: int) -> Header:
        """:meth:`decode` of ``data[offset : offset + 40]`` without the slice."""
        if len(data) < offset + HEADER_LEN:
            raise MalformedEnvelope("ratchet header must be 40 bytes")
        pn, n = _HEADER_TAIL.unpack_from(data, offset + KEY_LEN)
        return _make_header(bytes(data[offset : offset + KEY_LEN]), pn, n)


_make_header = positional_constructor(Header)


def kdf_rk(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """KDF_RK: HKDF with the root key as salt → (new root key, chain key).

    Exactly ``hkdf(dh_out, salt=root_key, info=INFO_RATCHET, length=64)`` split in
    halves, unrolled: the 64 bytes are precisely HKDF-Expand's blocks T(1) and T(2)
    (a test checks equality).
    """
    prk = hmac_sha256(root_key, dh_out)
    new_root = hmac_sha256(prk, _RK_INFO_BLOCK_1)
    return new_root, hmac_sha256(prk, new_root + _RK_INFO_BLOCK_2)


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """KDF_CK: → (next chain key = HMAC(ck, 0x02), message key = HMAC(ck, 0x01))."""
    return hmac_sha256_pair(chain_key, CHAIN_NEXT_KEY_CONSTANT, CHAIN_MESSAGE_KEY_CONSTANT)


_MESSAGE_KEY_EXTRACT = hmac_sha256_keyed(MESSAGE_KEY_SALT)
"""HKDF-Extract's HMAC under the constant all-zero salt, key schedule done once."""


def message_aead_key(message_key: bytes) -> tuple[bytes, bytes]:
    """(XChaCha20-Poly1305 key, nonce) from a message key; each key encrypts once.

    Exactly ``hkdf(mk, salt=32×0x00, info=INFO_MESSAGE_KEYS, length=56)``, unrolled
    into its three HMACs because it runs twice per message (a test checks equality):
    the constant salt's key schedule is precomputed, the PRK's is done once for
    both expand blocks.
    """
    extract = _MESSAGE_KEY_EXTRACT.copy()
    extract.update(message_key)
    first = hmac_sha256_keyed(extract.digest())
    second = first.copy()
    first.update(_INFO_BLOCK_1)
    t1 = first.digest()
    second.update(t1 + _INFO_BLOCK_2)
    return t1, second.digest()[:AEAD_NONCE_LEN]


def aead_encrypt(message_key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """ENCRYPT: XChaCha20-Poly1305 (libsodium IETF variant); ciphertext || 16-byte tag."""
    key, nonce = message_aead_key(message_key)
    return libsodium.xchacha20poly1305_encrypt(key, nonce, plaintext, associated_data)


def aead_decrypt(message_key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """DECRYPT; any authentication failure is DecryptionFailed."""
    key, nonce = message_aead_key(message_key)
    try:
        return libsodium.xchacha20poly1305_decrypt(key, nonce, ciphertext, associated_data)
    except (libsodium.SodiumError, ValueError, TypeError) as exc:
        raise DecryptionFailed("message authentication failed") from exc


SkippedKeys = Mapping[tuple[bytes, int], bytes]
"""(their ratchet key, message number) → message key, oldest first."""


@dataclass(frozen=True, slots=True)
class RatchetState:
    """The spec's state variables (RK, DHs, DHr, CKs, CKr, Ns, Nr, PN, MKSKIPPED).

    Never mutated; ``skipped`` is a dict that is copied, never changed in place.
    """

    root_key: bytes = field(repr=False)
    our_ratchet: X25519KeyPair
    their_ratchet_key: bytes | None
    sending_chain_key: bytes | None = field(repr=False)
    receiving_chain_key: bytes | None = field(repr=False)
    sending_count: int = 0
    receiving_count: int = 0
    previous_sending_count: int = 0
    skipped: SkippedKeys = field(default_factory=dict, repr=False)
    retired_ratchet_keys: tuple[bytes, ...] = ()

    def to_list(self) -> list[Any]:
        """msgpack-ready form, embedded in the session record (SPEC §13.7)."""
        return [
            _STATE_VERSION,
            self.root_key,
            self.our_ratchet.private,
            self.their_ratchet_key,
            self.sending_chain_key,
            self.receiving_chain_key,
            self.sending_count,
            self.receiving_count,
            self.previous_sending_count,
            [[pub, n, mk] for (pub, n), mk in self.skipped.items()],
            list(self.retired_ratchet_keys),
        ]

    @classmethod
    def from_list(cls, data: Any) -> RatchetState:
        """Inverse of :meth:`to_list`, checking every type and length."""
        try:
            (version, root, our, their, cks, ckr, ns, nr, pn, skipped, retired) = data
            if version != _STATE_VERSION:
                raise ValueError(f"unknown ratchet state version {version!r}")
            _key(root)
            for optional in (their, cks, ckr):
                if optional is not None:
                    _key(optional)
            for count in (ns, nr, pn):
                _u32(count)
            skipped_keys: dict[tuple[bytes, int], bytes] = {}
            for pub, n, mk in skipped:
                skipped_keys[(_key(pub), _u32(n))] = _key(mk)
            return cls(
                root_key=root,
                our_ratchet=X25519KeyPair.from_private(_key(our)),
                their_ratchet_key=their,
                sending_chain_key=cks,
                receiving_chain_key=ckr,
                sending_count=ns,
                receiving_count=nr,
                previous_sending_count=pn,
                skipped=skipped_keys,
                retired_ratchet_keys=tuple(_key(k) for k in retired),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed ratchet state: {exc}") from exc

    def to_bytes(self) -> bytes:
        packed: bytes = msgpack.packb(self.to_list(), use_bin_type=True)
        return packed

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        return cls.from_list(msgpack.unpackb(data, raw=False, strict_map_key=True))


_make_state = positional_constructor(RatchetState)


def _key(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_LEN:
        raise ValueError("expected 32 bytes")
    return value


def _u32(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_U32:
        raise ValueError("expected an unsigned 32-bit integer")
    return value


def initialize_initiator(shared_secret: bytes, their_ratchet_key: bytes, rng: Rng) -> RatchetState:
    """RatchetInitAlice: draw our first ratchet key, derive the sending chain."""
    our = X25519KeyPair.generate(rng)
    root, sending = kdf_rk(shared_secret, our.dh(their_ratchet_key))
    return RatchetState(root, our, their_ratchet_key, sending, None)


def initialize_recipient(shared_secret: bytes, our_ratchet: X25519KeyPair) -> RatchetState:
    """RatchetInitBob: our signed prekey is the first ratchet key; no chains yet."""
    return RatchetState(shared_secret, our_ratchet, None, None, None)


def encrypt(
    state: RatchetState, plaintext: bytes, associated_data: bytes
) -> tuple[RatchetState, Header, bytes]:
    """RatchetEncrypt → (new state, header, ciphertext); AEAD data is AD || header."""
    if state.sending_chain_key is None:
        raise ValueError("no sending chain yet: the recipient must receive first")
    if state.sending_count >= _MAX_U32:
        raise TooManySkippedMessages("sending chain exhausted; start a new session")
    header = _make_header(
        state.our_ratchet.public, state.previous_sending_count, state.sending_count
    )
    chain_key, message_key = kdf_ck(state.sending_chain_key)
    ciphertext = aead_encrypt(message_key, plaintext, associated_data + header.encode())
    new_state = _make_state(  # all fields, positionally: the hot path's cheapest copy
        state.root_key,
        state.our_ratchet,
        state.their_ratchet_key,
        chain_key,
        state.receiving_chain_key,
        state.sending_count + 1,
        state.receiving_count,
        state.previous_sending_count,
        state.skipped,
        state.retired_ratchet_keys,
    )
    return new_state, header, ciphertext


def _skip(
    chain_key: bytes,
    count: int,
    ratchet_key: bytes,
    until: int,
    out: list[tuple[tuple[bytes, int], bytes]],
) -> tuple[bytes, int]:
    """SkipMessageKeys: derive keys up to ``until``; refuse jumps over MAX_FORWARD_JUMP."""
    if until - count > MAX_FORWARD_JUMP:
        raise TooManySkippedMessages(
            f"header skips {until - count} messages (at most {MAX_FORWARD_JUMP})"
        )
    while count < until:
        chain_key, message_key = kdf_ck(chain_key)
        out.append(((ratchet_key, count), message_key))
        count += 1
    return chain_key, count


def decrypt(
    state: RatchetState,
    header: Header,
    ciphertext: bytes,
    associated_data: bytes,
    rng: Rng,
) -> tuple[RatchetState, bytes]:
    """RatchetDecrypt → (new state, plaintext); on any error ``state`` is untouched.

    Errors: DecryptionFailed (authentication), DuplicatedMessage (key already
    used), TooManySkippedMessages (jump over MAX_FORWARD_JUMP), InvalidKey
    (low-order ratchet key).
    """
    aad = associated_data + header.encode()
    slot = (header.ratchet_key, header.message_number)
    stored = state.skipped.get(slot)
    if stored is not None:
        plaintext = aead_decrypt(stored, ciphertext, aad)
        remaining = dict(state.skipped)
        del remaining[slot]
        return replace(state, skipped=remaining), plaintext
    if header.ratchet_key in state.retired_ratchet_keys:
        raise DuplicatedMessage("message of an old chain whose key is used or dropped")

    new_skipped: list[tuple[tuple[bytes, int], bytes]] = []
    root = state.root_key
    our = state.our_ratchet
    their = state.their_ratchet_key
    sending = state.sending_chain_key
    receiving = state.receiving_chain_key
    ns, nr, pn = state.sending_count, state.receiving_count, state.previous_sending_count
    retired = state.retired_ratchet_keys

    if header.ratchet_key != their:
        # DHRatchet: close the current receiving chain at PN, then step twice.
        if receiving is not None and their is not None:
            receiving, nr = _skip(receiving, nr, their, header.previous_chain_length, new_skipped)
        if their is not None:
            retired = (*retired, their)[-MAX_RETIRED_RATCHET_KEYS:]
        pn, ns, nr = ns, 0, 0
        their = header.ratchet_key
        root, receiving = kdf_rk(root, our.dh(their))
        our = X25519KeyPair.generate(rng)
        root, sending = kdf_rk(root, our.dh(their))
    elif receiving is None:
        raise DecryptionFailed("no receiving chain for this ratchet key")
    elif header.message_number < nr:
        raise DuplicatedMessage(f"message {header.message_number} was already received")

    receiving, nr = _skip(receiving, nr, their, header.message_number, new_skipped)
    receiving, message_key = kdf_ck(receiving)
    plaintext = aead_decrypt(message_key, ciphertext, aad)

    skipped = state.skipped
    if new_skipped:
        merged = dict(skipped)
        merged.update(new_skipped)
        excess = len(merged) - MAX_SKIPPED_KEYS
        if excess > 0:  # drop the oldest first
            for old in list(merged)[:excess]:
                del merged[old]
        skipped = merged
    new_state = _make_state(root, our, their, sending, receiving, ns, nr + 1, pn, skipped, retired)
    return new_state, plaintext
