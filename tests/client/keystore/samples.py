"""One valid record of each kind, for the key store's tests (client/keystore/records.py).

Fixed bytes, so a test compares what it reads back with what it wrote.
"""

from __future__ import annotations

from typing import Any

from blindrelay.client.keystore import (
    IncomingMessage,
    OneTimePreKeyRecord,
    OurIdentity,
    OutboxEntry,
    SignedPreKeyRecord,
)

KEY_A = b"\xa1" * 32
KEY_B = b"\xb2" * 32
NOW = 1_700_000_000_000


def our_identity(seed: bytes = b"\x01" * 32) -> OurIdentity:
    return OurIdentity("alice", "user", "wss://relay.example", seed, b"\x02" * 32)


def signed_prekey(key_id: int, private: bytes = b"\x03" * 32) -> SignedPreKeyRecord:
    return SignedPreKeyRecord(key_id, private, b"\x04" * 32, b"\x05" * 64, NOW)


def one_time_prekey(key_id: int, private: bytes = b"\x06" * 32) -> OneTimePreKeyRecord:
    return OneTimePreKeyRecord(key_id, private, bytes([key_id % 256]) * 32)


def message(msg_id: bytes, sender: str = "airline", body: bytes = b"hello") -> IncomingMessage:
    return IncomingMessage(msg_id, sender, NOW, body)


def outgoing(n: int, to: str = "bob", envelope: bytes | None = None, **fields: Any) -> OutboxEntry:
    """The n-th entry queued: positions and msg_ids follow ``n``."""
    body = envelope if envelope is not None else b"envelope-%d" % n
    return OutboxEntry(NOW * 1000 + n, bytes([n]) * 16, to, body, "chat", **fields)
