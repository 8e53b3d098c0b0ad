"""The direct libsodium calls equal PyNaCl's public bindings, byte for byte."""

from __future__ import annotations

import hashlib

import nacl.bindings
import nacl.exceptions
import pytest

from blindrelay.protocol.crypto import libsodium


def det(label: bytes, size: int) -> bytes:
    return hashlib.shake_256(label).digest(size)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 1024, 2048, 32768])
@pytest.mark.parametrize("ad_size", [0, 79, 119])
def test_aead_matches_pynacl_bindings(size, ad_size):
    key, nonce = det(b"key", 32), det(b"nonce", 24)
    plaintext, ad = det(b"pt%d" % size, size), det(b"ad", ad_size)
    ours = libsodium.xchacha20poly1305_encrypt(key, nonce, plaintext, ad)
    theirs = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    assert ours == theirs
    assert libsodium.xchacha20poly1305_decrypt(key, nonce, ours, ad) == plaintext


def test_aead_rejects_tampering_short_input_and_wrong_sizes():
    key, nonce = det(b"key", 32), det(b"nonce", 24)
    sealed = libsodium.xchacha20poly1305_encrypt(key, nonce, b"hello", b"ad")
    for bad in (bytes([sealed[0] ^ 1]) + sealed[1:], sealed[:-1], b"", sealed[:15]):
        with pytest.raises(libsodium.SodiumError):
            libsodium.xchacha20poly1305_decrypt(key, nonce, bad, b"ad")
    with pytest.raises(libsodium.SodiumError):
        libsodium.xchacha20poly1305_decrypt(key, nonce, sealed, b"other ad")
    for k, n in ((key[:31], nonce), (key, nonce[:23]), (key + b"\x00", nonce), ("k" * 32, nonce)):
        with pytest.raises(TypeError):
            libsodium.xchacha20poly1305_encrypt(k, n, b"hello", b"ad")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            libsodium.xchacha20poly1305_decrypt(k, n, sealed, b"ad")  # type: ignore[arg-type]


def test_x25519_matches_pynacl_bindings():
    for i in range(20):
        a, b = det(b"a%d" % i, 32), det(b"b%d" % i, 32)
        public_b = libsodium.scalarmult_base(b)
        assert public_b == nacl.bindings.crypto_scalarmult_base(b)
        assert libsodium.scalarmult(a, public_b) == nacl.bindings.crypto_scalarmult(a, public_b)


def test_x25519_low_order_point_is_refused_like_pynacl():
    scalar = det(b"s", 32)
    with pytest.raises(nacl.exceptions.RuntimeError):
        nacl.bindings.crypto_scalarmult(scalar, bytes(32))
    with pytest.raises(libsodium.SodiumError):
        libsodium.scalarmult(scalar, bytes(32))
    with pytest.raises(TypeError):
        libsodium.scalarmult(scalar, bytes(31))
    with pytest.raises(TypeError):
        libsodium.scalarmult_base(scalar[:31])
