"""Safety numbers and fingerprints (SPEC §13.9): what two people compare to rule out a MITM.

Trust on first use (the client keystore) catches a key that *changes*; it cannot
catch a relay that substituted a key *before* first use. Comparing a safety
number out of band (read aloud, side by side) closes that gap. The construction
is Signal's displayable fingerprint (it reproduces libsignal's published vector),
applied to our raw Ed25519 identity keys and handles:

1. For each party, ``h = version (2 bytes, big-endian) || identity_key || handle``
   (identity key: raw 32-byte Ed25519 public key; handle: UTF-8), then 5200
   times ``h = SHA-512(h || identity_key)``. The iteration count makes finding a
   key whose number collides with a given one cost ~2^112 hashing work rather
   than ~2^100.
2. The party's 30 digits: the first 30 bytes of ``h`` as six 5-byte big-endian
   integers, each ``mod 100000``, zero-padded to 5 digits.
3. The safety number is the two 30-digit strings sorted (smaller first) and
   concatenated, so both sides compute the same 60 digits.

This module owns the arithmetic only. It does not store trust decisions or
verification state (that is :mod:`blindrelay.client.keystore`) and performs no I/O.
"""

from __future__ import annotations

import hashlib

from blindrelay.protocol.errors import InvalidKey

SAFETY_NUMBER_VERSION = 0
"""Encoded as 2 big-endian bytes at the start of the hash input; bumping it
changes every number, so two clients on different versions never show a false
match."""

SAFETY_NUMBER_ITERATIONS = 5200
"""SHA-512 iterations per party (Signal's figure). ~2 ms here; raises the cost
of grinding for a colliding key by ~2^12."""

IDENTITY_KEY_BYTES = 32
DIGIT_GROUPS = 6
"""Groups of 5 digits per party: 6 × 5 = 30 digits ≈ 99.7 bits."""


def _check_key(identity_key: bytes) -> None:
    if not isinstance(identity_key, bytes) or len(identity_key) != IDENTITY_KEY_BYTES:
        raise InvalidKey(f"identity key must be {IDENTITY_KEY_BYTES} bytes")


def identity_digits(handle: str, identity_key: bytes) -> str:
    """One party's 30-digit half of a safety number (steps 1–2 above)."""
    _check_key(identity_key)
    if not handle:
        raise ValueError("handle must not be empty")
    return _displayable_digits(identity_key, handle.encode("utf-8"))


def _displayable_digits(key: bytes, stable_id: bytes) -> str:
    """Signal's displayable-fingerprint half over any key encoding.

    Kept apart from :func:`identity_digits` so that a test can run it on
    libsignal's published vector (33-byte 0x05-prefixed Curve25519 keys, phone
    numbers as identifiers) and show the construction is Signal's own.
    """
    digest = SAFETY_NUMBER_VERSION.to_bytes(2, "big") + key + stable_id
    for _ in range(SAFETY_NUMBER_ITERATIONS):
        digest = hashlib.sha512(digest + key).digest()
    return "".join(
        f"{int.from_bytes(digest[i * 5 : i * 5 + 5], 'big') % 100_000:05d}"
        for i in range(DIGIT_GROUPS)
    )


def safety_number(
    our_handle: str, our_identity_key: bytes, their_handle: str, their_identity_key: bytes
) -> str:
    """The 60 digits both parties see identically; any key or handle change alters it."""
    halves = sorted(
        (
            identity_digits(our_handle, our_identity_key),
            identity_digits(their_handle, their_identity_key),
        )
    )
    return halves[0] + halves[1]


def format_safety_number(digits: str) -> str:
    """Group digits by five for reading aloud: ``"12345 67890 …"``."""
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


def key_fingerprint(identity_key: bytes) -> bytes:
    """BLAKE2b-256 of the identity key: the ``key_fingerprint`` a badge carries (SPEC §8.1)."""
    _check_key(identity_key)
    return hashlib.blake2b(identity_key, digest_size=32).digest()


def fingerprint(identity_key: bytes) -> str:
    """Short form for logs and CLIs: the first 16 bytes of :func:`key_fingerprint`, hex.

    A prefix of the badge's value, so the two can be eyeballed against each other.
    128 bits resist second preimages, but it is not a substitute for the safety
    number, which also binds the handle and is what people should compare.
    """
    return key_fingerprint(identity_key)[:16].hex()
