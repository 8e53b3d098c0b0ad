"""Encryption at rest of the SQLite key store: the passphrase, the master key, sealed rows.

::

    passphrase ──Argon2id(salt, opslimit, memlimit)──▶ KEK (32 B)
    master key (32 random B), stored as XChaCha20-Poly1305(KEK, AD = header fields)
    record key = BLAKE2b(key=master, person="br.ks.record")
    lookup key = BLAKE2b(key=master, person="br.ks.lookup")
    row key  k = BLAKE2b-256(key=lookup key, table ‖ 0x00 ‖ natural key)
    row AD     = "blindrelay.keystore.v1" ‖ 0x00 ‖ table ‖ 0x00 ‖ k
    row value  = nonce(24) ‖ XChaCha20-Poly1305(record key, nonce, msgpack(fields), row AD)
    log row    g = BLAKE2b-256(key=lookup key, table ‖ 0x00 ‖ group), seq = u64 position,
               AD = "blindrelay.keystore.v1" ‖ 0x00 ‖ table ‖ 0x00 ‖ g ‖ seq (big-endian)

Unwrapping the master key is the passphrase verifier (a wrong passphrase fails
its tag → :class:`WrongPassphrase`), and changing the passphrase rewraps that one
key instead of every record. The AD binds each sealed value to its table and
row, so rows cannot be swapped or moved between tables undetected. Not hidden
(SPEC §13.8): how many rows, which share a group, and each value's exact length.

What it is not: cryptographic construction — every primitive is libsodium's
(PyNaCl and the protocol's direct bindings); this module only composes them.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Sequence
from typing import Any

import msgpack
import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.pwhash.argon2id as argon2id
import nacl.utils

from blindrelay.protocol.crypto.libsodium import (
    SodiumError,
    xchacha20poly1305_decrypt,
    xchacha20poly1305_encrypt,
)

from .records import KeyStoreCorrupted, WrongPassphrase

DEFAULT_OPSLIMIT = argon2id.OPSLIMIT_MODERATE
DEFAULT_MEMLIMIT = argon2id.MEMLIMIT_MODERATE
"""Argon2id cost for new stores: libsodium's MODERATE (3 passes, 256 MiB,
~0.6 s here). The file guards long-term identity keys against offline guessing
once a device or backup is stolen, and it is unlocked once per start, where
half a second is acceptable; INTERACTIVE (64 MiB, ~0.07 s) makes each guess 8×
cheaper and is meant for online logins. Memory-poor devices pass lower costs;
the costs used are stored in the header, so any store opens anywhere."""

MAX_ACCEPTED_MEMLIMIT = argon2id.MEMLIMIT_SENSITIVE
"""Largest Argon2 memory cost an existing header may ask for (1 GiB); a planted
header must not make opening the file exhaust memory."""

FORMAT_VERSION = 1
"""Of the sealing above, bound into the master key's AD; the tables have their own
version (``schema.SCHEMA_VERSION``)."""

KEY_BYTES = 32
_NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_AD_PREFIX = b"blindrelay.keystore.v1\x00"
_MASTER_AD_PREFIX = b"blindrelay.keystore.v1.master\x00"


def passphrase_bytes(passphrase: str) -> bytes:
    """NFC first, so the same passphrase typed on two keyboards derives one key."""
    if not isinstance(passphrase, str) or not passphrase:
        raise ValueError("passphrase must be a non-empty str")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def check_costs(opslimit: int, memlimit: int, *, max_memlimit: int) -> None:
    if not argon2id.OPSLIMIT_MIN <= opslimit <= argon2id.OPSLIMIT_MAX:
        raise ValueError("opslimit out of Argon2id range")
    if not argon2id.MEMLIMIT_MIN <= memlimit <= max_memlimit:
        raise ValueError("memlimit out of accepted range")


def _derive_kek(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(
        KEY_BYTES, passphrase_bytes(passphrase), salt, opslimit=opslimit, memlimit=memlimit
    )


def _master_ad(salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return (
        _MASTER_AD_PREFIX
        + FORMAT_VERSION.to_bytes(2, "big")
        + salt
        + opslimit.to_bytes(8, "big")
        + memlimit.to_bytes(8, "big")
    )


def wrap_master(master: bytes, passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    kek = _derive_kek(passphrase, salt, opslimit, memlimit)
    nonce = nacl.utils.random(_NONCE_BYTES)
    ad = _master_ad(salt, opslimit, memlimit)
    return nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(master, ad, nonce, kek)


def unwrap_master(header: dict[str, Any], passphrase: str) -> bytes:
    """The master key, or :class:`WrongPassphrase` (also for an altered header)."""
    salt, ops, mem = header["salt"], header["opslimit"], header["memlimit"]
    kek = _derive_kek(passphrase, salt, ops, mem)
    wrapped = header["wrapped_master"]
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            wrapped[_NONCE_BYTES:], _master_ad(salt, ops, mem), wrapped[:_NONCE_BYTES], kek
        )
    except nacl.exceptions.CryptoError:
        raise WrongPassphrase("wrong passphrase for this key store") from None


def _subkey(master: bytes, person: bytes) -> bytes:
    return nacl.hash.blake2b(
        b"", digest_size=KEY_BYTES, key=master, person=person, encoder=nacl.encoding.RawEncoder
    )


class Sealer:
    """Row keys and sealed values under one master key.

    Every record read or written costs one lookup hash and one AEAD call, a
    bulk send several per message: hashlib's BLAKE2b (the same function as
    libsodium's keyed generichash, ~0.7 µs against ~7 µs through nacl.hash's
    argument checks) and the protocol's direct libsodium AEAD calls.
    """

    __slots__ = ("lookup_key", "record_key")

    def __init__(self, master: bytes) -> None:
        self.record_key = _subkey(master, b"br.ks.record")
        self.lookup_key = _subkey(master, b"br.ks.lookup")

    def lookup(self, table: str, natural_key: bytes) -> bytes:
        """The row key: a keyed hash, so that no handle or id shows in the file."""
        data = table.encode() + b"\x00" + natural_key
        return hashlib.blake2b(data, digest_size=32, key=self.lookup_key).digest()

    def seal(self, table: str, k: bytes, fields: Sequence[Any]) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = msgpack.packb(fields, use_bin_type=True)
        ad = _AD_PREFIX + table.encode() + b"\x00" + k
        return nonce + xchacha20poly1305_encrypt(self.record_key, nonce, plaintext, ad)

    def open(self, table: str, k: bytes, sealed: bytes) -> list[Any]:
        """The fields sealed in a row, or :class:`KeyStoreCorrupted`."""
        ad = _AD_PREFIX + table.encode() + b"\x00" + k
        try:
            if len(sealed) < _NONCE_BYTES:
                raise SodiumError("record shorter than its nonce")
            plaintext = xchacha20poly1305_decrypt(
                self.record_key, sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], ad
            )
        except SodiumError:
            raise KeyStoreCorrupted(f"a record in {table!r} fails authentication") from None
        fields = msgpack.unpackb(plaintext, raw=False, strict_map_key=True)
        if not isinstance(fields, list):
            raise KeyStoreCorrupted(f"a record in {table!r} is malformed")
        return fields
