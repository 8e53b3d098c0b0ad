"""HKDF-SHA256 and HMAC-SHA256, the only key derivations blindrelay uses (SPEC §13.1).

PyNaCl has no HMAC or HKDF, so both come from the standard library: HMAC is
OpenSSL's, reached through the C object behind :func:`hmac.new` (see
:func:`_c_hmac_new`; ``hmac.new`` itself where that is missing), HKDF (RFC 5869)
as the few lines of extract-then-expand over it, checked against the RFC's test
cases 1–3. Nothing here hashes by hand.

This module does not own any info string's meaning; each construction passes
its own (they are all listed in SPEC §13.1 and in :data:`INFO_STRINGS`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Protocol, cast

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
"""Passed by name: the standard library then uses OpenSSL's HMAC (its documented
fast path); a digest constructor would not."""


class Mac(Protocol):
    """What an HMAC object offers here (``hmac.HMAC`` or its C core)."""

    def copy(self) -> Mac: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


_MacFactory = Callable[[bytes, "bytes | None", str], Mac]


def _hmac_new_public(key: bytes, msg: bytes | None, digestmod: str) -> Mac:
    return hmac.new(key, msg, digestmod)


def _c_hmac_new() -> _MacFactory:
    """The C object that ``hmac.new(key, msg, "sha256")`` wraps, or ``hmac.new`` itself.

    ``_hashlib`` is CPython's OpenSSL binding behind both hashlib and hmac; calling
    its ``hmac_new`` directly skips the pure-Python wrapper's per-call layers
    (``__init__``, ``_init_hmac``, ``copy``, ``update``, ``digest``): ~0.6 µs of a
    ~1.8 µs HMAC on the benchmark machine, and a message costs ten HMACs.
    tests/protocol/crypto/test_kdf.py checks both paths against :func:`hmac.digest`.
    """
    try:
        import _hashlib
    except ImportError:  # pragma: no cover - a Python built without OpenSSL
        return _hmac_new_public
    return cast(_MacFactory, _hashlib.hmac_new)


_hmac_new = _c_hmac_new()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), OpenSSL's implementation through the standard library."""
    return _hmac_new(key, data, _SHA256).digest()


def hmac_sha256_keyed(key: bytes) -> Mac:
    """An HMAC-SHA256 object with ``key`` absorbed and no data yet.

    ``.copy()`` of it starts another HMAC under the same key without redoing the
    key schedule: cheaper than a fresh HMAC when one key authenticates several
    inputs (the chain KDF, HKDF-Expand blocks). Same bytes as :func:`hmac_sha256`.
    """
    return _hmac_new(key, None, _SHA256)


def hmac_sha256_pair(key: bytes, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """``(HMAC(key, first), HMAC(key, second))``."""
    return _hmac_new(key, first, _SHA256).digest(), _hmac_new(key, second, _SHA256).digest()


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
