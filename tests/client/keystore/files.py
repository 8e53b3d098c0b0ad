"""Reading and writing key store files the way the format says, without the store's code.

The keys are derived here from the passphrase and the header with PyNaCl alone
(client/keystore/sealing.py documents the derivation), so a test can check what
the store wrote, or plant a row as an older version would have, independently.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import nacl.bindings
import nacl.encoding
import nacl.hash
import nacl.pwhash.argon2id as argon2id

from blindrelay.client.keystore import SqliteKeyStore

FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
PASSPHRASE = "correct horse battery staple"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def open_sqlite(path: Path, passphrase: str = PASSPHRASE, **kwargs: Any) -> SqliteKeyStore:
    return SqliteKeyStore.open(path, passphrase, create=True, **FAST, **kwargs)


def copy_fixture(name: str, folder: Path) -> Path:
    """A copy to open: opening a file of an older version upgrades it in place."""
    target = folder / name
    shutil.copyfile(FIXTURES / name, target)
    return target


@dataclass(frozen=True)
class FileKeys:
    record_key: bytes
    lookup_key: bytes

    def lookup(self, table: str, natural_key: bytes) -> bytes:
        data = table.encode() + b"\x00" + natural_key
        return nacl.hash.blake2b(
            data, digest_size=32, key=self.lookup_key, encoder=nacl.encoding.RawEncoder
        )

    def seal(self, table: str, k: bytes, fields: list[Any], nonce: bytes = b"\x07" * 24) -> bytes:
        ad = b"blindrelay.keystore.v1\x00" + table.encode() + b"\x00" + k
        plaintext = msgpack.packb(fields, use_bin_type=True)
        return nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, ad, nonce, self.record_key
        )

    def open(self, table: str, k: bytes, sealed: bytes) -> list[Any]:
        ad = b"blindrelay.keystore.v1\x00" + table.encode() + b"\x00" + k
        plaintext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[24:], ad, sealed[:24], self.record_key
        )
        fields: list[Any] = msgpack.unpackb(plaintext)
        return fields


def file_keys(path: Path, passphrase: str = PASSPHRASE) -> FileKeys:
    """Unwrap the master key from the header and derive the row keys from it."""
    with sqlite3.connect(path) as conn:
        ((fmt, salt, ops, mem, wrapped),) = conn.execute(
            "SELECT format, salt, opslimit, memlimit, wrapped_master FROM header"
        )
    conn.close()
    secret = unicodedata.normalize("NFC", passphrase).encode()
    kek = argon2id.kdf(32, secret, salt, opslimit=ops, memlimit=mem)
    ad = (
        b"blindrelay.keystore.v1.master\x00" + fmt.to_bytes(2, "big") + salt
        + ops.to_bytes(8, "big") + mem.to_bytes(8, "big")
    )  # fmt: skip
    master = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        wrapped[24:], ad, wrapped[:24], kek
    )

    def subkey(person: bytes) -> bytes:
        return hashlib.blake2b(b"", digest_size=32, key=master, person=person).digest()

    return FileKeys(subkey(b"br.ks.record"), subkey(b"br.ks.lookup"))


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows and the schema version: what "unchanged" compares."""
    with sqlite3.connect(path) as conn:
        names = [name for (name,) in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]
        tables = {
            name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall())
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        tables["-schema"] = [tuple(names), conn.execute("PRAGMA user_version").fetchone()]
    conn.close()
    return tables


def disk_bytes(path: Path) -> bytes:
    """Everything SQLite keeps of the store on disk: the file, its WAL and shared memory."""
    parts = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return b"".join(part.read_bytes() for part in parts if part.exists())
