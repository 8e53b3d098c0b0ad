"""HKDF-SHA256 and HMAC-SHA256, the only key derivations blindrelay uses (SPEC §13.1).

PyNaCl has no HMAC or HKDF, so both come from the standard library: HMAC from
:mod:`hmac` (OpenSSL underneath), HKDF (RFC 5869) as the few lines of
extract-then-expand over it, checked against the RFC's test cases 1–3.

This module does not own any info string's meaning; each construction passes
its own (they are all listed in SPEC §13.1 and in :data:`INFO_STRINGS`).
"""

from __future__ import annotations

import hmac

HASH_LEN = 32
"""SHA-256 output length; also the length of every key blindrelay derives."""

INFO_X3DH = b"blindrelay/v1/x3dh"
"""HKDF info of the X3DH shared secret (SPEC §13.3)."""

INFO_RATCHET = b"blindrelay/v1/ratchet"
"""HKDF info of the root-chain step KDF_RK (SPEC §13.4)."""

INFO_MESSAGE_KEYS = b"blindrelay/v1/message-keys"
"""HKDF info deriving the AEAD key and nonce from a message key (SPEC §13.4)."""

INFO_STRINGS = (INFO_X3DH, INFO_RATCHET, INFO_MESSAGE_KEYS)
"""Every HKDF info string; distinct so that no two derivations can collide."""

_MAX_OUTPUT = 255 * HASH_LEN


_SHA256 = "sha256"
"""Passed by name: :func:`hmac.digest` and :func:`hmac.new` take OpenSSL's C path
for a digest name (the documented fast path)."""


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) from the standard library's one-shot C path."""
    return hmac.digest(key, data, _SHA256)


def hmac_sha256_keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 object with ``key`` absorbed and no data yet.

    ``.copy()`` of it starts another HMAC under the same key without redoing the
    key schedule: cheaper than a fresh HMAC when one key authenticates several
    inputs (the chain KDF, HKDF-Expand blocks). Same bytes as :func:`hmac_sha256`.
    """
    return hmac.new(key, None, _SHA256)


def hmac_sha256_pair(key: bytes, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """``(HMAC(key, first), HMAC(key, second))`` with one key schedule."""
    a = hmac.new(key, None, _SHA256)
    b = a.copy()
    a.update(first)
    b.update(second)
    return a.digest(), b.digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 §2.2; an empty salt means HashLen zero bytes, as the RFC says."""
    return hmac_sha256(salt or bytes(HASH_LEN), ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3: T(i) = HMAC(PRK, T(i-1) | info | i), truncated to ``length``.

    The PRK's key schedule is done once and copied per block.
    """
    if not 0 < length <= _MAX_OUTPUT:
        raise ValueError(f"HKDF output length must be 1..{_MAX_OUTPUT}, not {length}")
    keyed = hmac_sha256_keyed(prk)
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        mac = keyed.copy()
        mac.update(block + info + bytes((counter,)))
        block = mac.digest()
        output += block
        counter += 1
    return output[:length]


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand with ``info``."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)
