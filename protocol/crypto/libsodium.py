"""Hot-path calls into PyNaCl's libsodium, without ``nacl.bindings``' per-call wrapper.

The same libsodium functions that :mod:`nacl.bindings` calls, reached through
PyNaCl's own cffi module (``nacl._sodium``, what the bindings themselves import).
Nothing cryptographic happens in Python here. Measured on the benchmark machine
(bench/crypto.py), the public wrapper of XChaCha20-Poly1305 costs ~5.1 µs per
1 KiB call of which the C work is ~2.2 µs: six ``ensure`` checks that each
format their error message eagerly, a second allocation for the output length,
and the copy out. A message runs one encryption and one decryption, so the
wrapper was ~12% of a steady-chain message (~6 of ~51 µs).

Callers here pass inputs whose types and lengths they own (derived keys and
nonces are always 32/24 bytes); this module still checks the sizes that C would
otherwise read past, because cffi does not. Tests compare every function with
its :mod:`nacl.bindings` counterpart.

Not owned here: error naming (callers map failures to protocol errors).
"""

from __future__ import annotations

from typing import Any

from nacl._sodium import ffi, lib  # type: ignore[import-not-found]

KEY_BYTES = 32
NONCE_BYTES = 24
TAG_BYTES = 16
X25519_BYTES = 32

_new = ffi.new
_buffer = ffi.buffer
_NULL = ffi.NULL
_encrypt = lib.crypto_aead_xchacha20poly1305_ietf_encrypt
_decrypt = lib.crypto_aead_xchacha20poly1305_ietf_decrypt
_scalarmult = lib.crypto_scalarmult
_scalarmult_base = lib.crypto_scalarmult_base

assert lib.crypto_aead_xchacha20poly1305_ietf_keybytes() == KEY_BYTES
assert lib.crypto_aead_xchacha20poly1305_ietf_npubbytes() == NONCE_BYTES
assert lib.crypto_aead_xchacha20poly1305_ietf_abytes() == TAG_BYTES
assert lib.crypto_scalarmult_bytes() == lib.crypto_scalarmult_scalarbytes() == X25519_BYTES


class SodiumError(Exception):
    """libsodium refused the operation (authentication failure, low-order point)."""


def _check(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise TypeError(f"{name} must be {length} bytes")


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """crypto_aead_xchacha20poly1305_ietf_encrypt → ciphertext || 16-byte tag."""
    _check("key", key, KEY_BYTES)
    _check("nonce", nonce, NONCE_BYTES)
    length = len(plaintext)
    out = _new("unsigned char[]", length + TAG_BYTES)
    _encrypt(out, _NULL, plaintext, length, ad, len(ad), _NULL, nonce, key)
    return _copy_out(out)


def xchacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """crypto_aead_xchacha20poly1305_ietf_decrypt; SodiumError if it does not verify."""
    _check("key", key, KEY_BYTES)
    _check("nonce", nonce, NONCE_BYTES)
    length = len(ciphertext)
    if length < TAG_BYTES:
        raise SodiumError("ciphertext shorter than the tag")
    out = _new("unsigned char[]", length - TAG_BYTES)
    if _decrypt(out, _NULL, _NULL, ciphertext, length, ad, len(ad), nonce, key) != 0:
        raise SodiumError("message authentication failed")
    return _copy_out(out)


def scalarmult(private: bytes, public: bytes) -> bytes:
    """crypto_scalarmult (X25519); SodiumError when libsodium rejects the result
    (all-zero output, i.e. a low-order ``public``)."""
    _check("X25519 private key", private, X25519_BYTES)
    _check("X25519 public key", public, X25519_BYTES)
    out = _new("unsigned char[]", X25519_BYTES)
    if _scalarmult(out, private, public) != 0:
        raise SodiumError("low-order X25519 public key")
    return _copy_out(out)


def scalarmult_base(private: bytes) -> bytes:
    """crypto_scalarmult_base: the X25519 public key of ``private``."""
    _check("X25519 private key", private, X25519_BYTES)
    out = _new("unsigned char[]", X25519_BYTES)
    if _scalarmult_base(out, private) != 0:  # pragma: no cover - only for a zero result
        raise SodiumError("X25519 base multiplication failed")
    return _copy_out(out)


def _copy_out(out: Any) -> bytes:
    """The cffi buffer as bytes (one copy, as PyNaCl makes)."""
    data: bytes = _buffer(out)[:]
    return data
