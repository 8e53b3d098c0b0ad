"""Key types of the end-to-end layer and the two curve operations on them (SPEC §13.2).

Identity keys are Ed25519 (RFC 8032) key pairs. For Diffie–Hellman they are
converted to X25519 with libsodium's birational map
(``crypto_sign_ed25519_{pk,sk}_to_curve25519``). We do not use XEdDSA (Signal's
way of signing with an X25519 key): its signatures differ between the paper,
libxeddsa and libsignal, it is not an RFC, and PyNaCl lacks it; Ed25519 is
standard, deterministic, and PyNaCl has it. Using one key for both signing and
DH is what X3DH itself requires of identity keys.

Every primitive comes from PyNaCl; nothing here is hand-written maths. Failures
become named errors: a malformed or low-order public key is :class:`InvalidKey`
(libsodium reports it as a bare ``RuntimeError``), a bad signature is
:class:`InvalidSignature`.

Not owned here: storing keys (``client/keystore``), deciding whether a key is
trusted (``client``), key agreement (:mod:`.x3dh`).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.signing

from blindrelay.protocol.crypto import libsodium
from blindrelay.protocol.errors import InvalidKey, InvalidSignature

Rng = Callable[[int], bytes]
"""Randomness source ``rng(n) -> n bytes``; injected, never read from the OS here."""

KEY_LEN = 32
SIGNATURE_LEN = 64
MAX_KEY_ID = 2**32 - 1
"""Prekey ids are unsigned 32-bit on the wire (SPEC §13.6)."""

KEY_TYPE_X25519 = 0x05
"""Type byte of Encode() for X25519 keys; 0x05 as libsignal uses (SPEC §13.2)."""

KEY_TYPE_ED25519 = 0xED
"""Type byte of Encode() for Ed25519 identity keys (SPEC §13.2)."""

SIGNED_PREKEY_CONTEXT = b"blindrelay/v1/signed-prekey"
"""Domain separation of the signed-prekey signature: no other signed message of
the protocol can start with these bytes (SPEC §13.2)."""

_U32 = struct.Struct(">I")
_ZERO_KEY = bytes(KEY_LEN)


def _check_len(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise InvalidKey(f"{name} must be {length} bytes")


def _check_key_id(key_id: int) -> None:
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id must be an unsigned 32-bit integer, not {key_id!r}")


def encode_x25519_public(public: bytes) -> bytes:
    """X3DH's Encode(PK) for X25519: ``0x05 || u`` (33 bytes)."""
    _check_len("X25519 public key", public, KEY_LEN)
    return bytes((KEY_TYPE_X25519,)) + public


def encode_ed25519_public(public: bytes) -> bytes:
    """Encode(IK) for Ed25519 identity keys: ``0xED || A`` (33 bytes)."""
    _check_len("Ed25519 public key", public, KEY_LEN)
    return bytes((KEY_TYPE_ED25519,)) + public


def signed_prekey_message(public: bytes) -> bytes:
    """The exact bytes the identity key signs: ``context || 0x00 || 0x05 || spk_public``.

    Same shape as every signed object of the protocol (SPEC §14: context, a zero
    byte, body), with Encode(SPK) as the body.
    """
    return SIGNED_PREKEY_CONTEXT + b"\x00" + encode_x25519_public(public)


def x25519(private: bytes, public: bytes) -> bytes:
    """X25519 (RFC 7748) via libsodium, rejecting low-order points (SPEC §13.2).

    libsodium refuses a low-order peer key (all-zero output); we re-check the
    output anyway, in constant time, because the X3DH and ratchet security
    arguments assume a contributory DH. Wrong types or lengths are InvalidKey
    (checked once, in :mod:`.libsodium`).
    """
    try:
        shared = libsodium.scalarmult(private, public)
    except libsodium.SodiumError as exc:
        raise InvalidKey("low-order X25519 public key") from exc
    except TypeError as exc:
        raise InvalidKey(str(exc)) from None
    if hmac.compare_digest(shared, _ZERO_KEY):
        raise InvalidKey("X25519 output is all zero")
    return shared


def ed25519_public_to_x25519(public: bytes) -> bytes:
    """Map an Ed25519 public key to its X25519 form; malformed/low-order → InvalidKey."""
    _check_len("Ed25519 public key", public, KEY_LEN)
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public)
    except (nacl.exceptions.RuntimeError, RuntimeError) as exc:
        raise InvalidKey("Ed25519 public key is not a valid point") from exc


def verify_signature(public: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature (RFC 8032, libsodium's strict checks).

    Raises InvalidSignature on any failure, including a malformed key: a caller
    asking "is this signed?" gets one answer.
    """
    if len(public) != KEY_LEN or len(signature) != SIGNATURE_LEN:
        raise InvalidSignature("wrong key or signature length")
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, RuntimeError) as exc:
        raise InvalidSignature("Ed25519 signature does not verify") from exc


def signature_valid(public: bytes, message: bytes, signature: bytes) -> bool:
    """:func:`verify_signature` as a yes or no, for callers whose refusal is their own
    (a LOGIN, a statement, a rotation proof) and who must do the same work either way."""
    try:
        verify_signature(public, message, signature)
    except InvalidSignature:
        return False
    return True


class IdentityKeyPair:
    """A long-term Ed25519 identity, usable for X25519 through conversion.

    ``to_bytes()`` is the 32-byte RFC 8032 seed; everything else derives from it.
    """

    __slots__ = ("_signing_key", "_x25519_private", "public", "x25519_public")

    public: bytes
    x25519_public: bytes

    def __init__(self, seed: bytes) -> None:
        _check_len("identity seed", seed, KEY_LEN)
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public = bytes(self._signing_key.verify_key)
        self._x25519_private = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
            seed + self.public
        )
        self.x25519_public = nacl.bindings.crypto_scalarmult_base(self._x25519_private)

    @classmethod
    def generate(cls, rng: Rng) -> IdentityKeyPair:
        return cls(rng(KEY_LEN))

    @classmethod
    def from_seed(cls, seed: bytes) -> IdentityKeyPair:
        return cls(seed)

    @property
    def seed(self) -> bytes:
        return bytes(self._signing_key)

    def sign(self, message: bytes) -> bytes:
        """Deterministic Ed25519 signature (64 bytes)."""
        return self._signing_key.sign(message).signature

    def dh(self, their_x25519_public: bytes) -> bytes:
        """X25519 of our converted private key with ``their_x25519_public``."""
        return x25519(self._x25519_private, their_x25519_public)

    def to_bytes(self) -> bytes:
        return self.seed

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityKeyPair:
        return cls(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdentityKeyPair):
            return NotImplemented
        return hmac.compare_digest(self.seed, other.seed)

    def __hash__(self) -> int:
        return hash(self.public)

    def __repr__(self) -> str:
        return f"IdentityKeyPair(public={self.public.hex()})"


@dataclass(frozen=True, slots=True)
class X25519KeyPair:
    """An X25519 key pair (prekeys, ephemeral and ratchet keys)."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_private(cls, private: bytes) -> X25519KeyPair:
        try:
            return cls(private, libsodium.scalarmult_base(private))
        except TypeError as exc:
            raise InvalidKey(str(exc)) from None

    @classmethod
    def generate(cls, rng: Rng) -> X25519KeyPair:
        return cls.from_private(rng(KEY_LEN))

    def dh(self, their_public: bytes) -> bytes:
        return x25519(self.private, their_public)

    def to_bytes(self) -> bytes:
        return self.private

    @classmethod
    def from_bytes(cls, data: bytes) -> X25519KeyPair:
        return cls.from_private(data)


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    """A medium-term X25519 prekey signed by the identity key (SPEC §13.2).

    The signature covers ``signed_prekey_message(public)`` only, not ``key_id``
    (as in Signal): a relay that swaps ids can only make a session fail.
    ``to_bytes()``: key_id (u32 BE) || private (32) || signature (64).
    """

    key_id: int
    keypair: X25519KeyPair
    signature: bytes

    def __post_init__(self) -> None:
        _check_key_id(self.key_id)
        if len(self.signature) != SIGNATURE_LEN:
            raise InvalidSignature("signature must be 64 bytes")

    @classmethod
    def generate(cls, identity: IdentityKeyPair, key_id: int, rng: Rng) -> SignedPreKey:
        keypair = X25519KeyPair.generate(rng)
        return cls(key_id, keypair, identity.sign(signed_prekey_message(keypair.public)))

    @property
    def public(self) -> bytes:
        return self.keypair.public

    def to_bytes(self) -> bytes:
        return _U32.pack(self.key_id) + self.keypair.private + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPreKey:
        if len(data) != 4 + KEY_LEN + SIGNATURE_LEN:
            raise InvalidKey("signed prekey record must be 100 bytes")
        (key_id,) = _U32.unpack_from(data)
        return cls(key_id, X25519KeyPair.from_private(data[4:36]), data[36:])


@dataclass(frozen=True, slots=True)
class OneTimePreKey:
    """A single-use X25519 prekey. ``to_bytes()``: key_id (u32 BE) || private (32)."""

    key_id: int
    keypair: X25519KeyPair

    def __post_init__(self) -> None:
        _check_key_id(self.key_id)

    @classmethod
    def generate(cls, key_id: int, rng: Rng) -> OneTimePreKey:
        return cls(key_id, X25519KeyPair.generate(rng))

    @property
    def public(self) -> bytes:
        return self.keypair.public

    def to_bytes(self) -> bytes:
        return _U32.pack(self.key_id) + self.keypair.private

    @classmethod
    def from_bytes(cls, data: bytes) -> OneTimePreKey:
        if len(data) != 4 + KEY_LEN:
            raise InvalidKey("one-time prekey record must be 36 bytes")
        (key_id,) = _U32.unpack_from(data)
        return cls(key_id, X25519KeyPair.from_private(data[4:]))


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What an initiator fetches from the relay to start a session (SPEC §13.3).

    ``to_bytes()``: identity_key (32) || signed_prekey_id (u32 BE) ||
    signed_prekey_public (32) || signature (64) || flag (1: 0x00 none, 0x01 one)
    || [one_time_prekey_id (u32 BE) || one_time_prekey_public (32)].
    """

    identity_key: bytes
    signed_prekey_id: int
    signed_prekey_public: bytes
    signed_prekey_signature: bytes
    one_time_prekey_id: int | None = None
    one_time_prekey_public: bytes | None = None

    def verify(self) -> None:
        """Check shapes, the identity key's point, and the signed-prekey signature.

        SPEC §13.3: "The initiator MUST verify the signed-prekey signature and
        abort if it fails."
        """
        _check_len("identity key", self.identity_key, KEY_LEN)
        _check_len("signed prekey", self.signed_prekey_public, KEY_LEN)
        _check_key_id(self.signed_prekey_id)
        if (self.one_time_prekey_id is None) != (self.one_time_prekey_public is None):
            raise InvalidKey("one-time prekey id and public key must come together")
        if self.one_time_prekey_id is not None and self.one_time_prekey_public is not None:
            _check_key_id(self.one_time_prekey_id)
            _check_len("one-time prekey", self.one_time_prekey_public, KEY_LEN)
        ed25519_public_to_x25519(self.identity_key)
        verify_signature(
            self.identity_key,
            signed_prekey_message(self.signed_prekey_public),
            self.signed_prekey_signature,
        )

    def to_bytes(self) -> bytes:
        head = (
            self.identity_key
            + _U32.pack(self.signed_prekey_id)
            + self.signed_prekey_public
            + self.signed_prekey_signature
        )
        if self.one_time_prekey_id is None or self.one_time_prekey_public is None:
            return head + b"\x00"
        return head + b"\x01" + _U32.pack(self.one_time_prekey_id) + self.one_time_prekey_public

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKeyBundle:
        base = KEY_LEN + 4 + KEY_LEN + SIGNATURE_LEN
        if len(data) == base + 1 and data[base] == 0:
            otpk_id, otpk = None, None
        elif len(data) == base + 1 + 4 + KEY_LEN and data[base] == 1:
            (otpk_id,) = _U32.unpack_from(data, base + 1)
            otpk = data[base + 5 :]
        else:
            raise InvalidKey("malformed prekey bundle")
        (spk_id,) = _U32.unpack_from(data, KEY_LEN)
        return cls(
            identity_key=data[:KEY_LEN],
            signed_prekey_id=spk_id,
            signed_prekey_public=data[KEY_LEN + 4 : 2 * KEY_LEN + 4],
            signed_prekey_signature=data[2 * KEY_LEN + 4 : base],
            one_time_prekey_id=otpk_id,
            one_time_prekey_public=otpk,
        )
