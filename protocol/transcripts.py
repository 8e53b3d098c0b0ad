"""The byte strings an account signs to prove itself (SPEC §3.4, §4.2–4.3), sans I/O.

Each binds what is proven to this relay (its key), this moment (a challenge or a
time) and, for a login or a registration, this channel (the Noise handshake hash),
so a signature made for one purpose, relay or connection is refused by every
other. The connection machine (:mod:`.connection`) checks the registration and
login proofs with them; the client signs them; rotation is checked by the relay's
handler. Kept apart so that an implementation in another language can read the
constructions, and test them against ``vectors/``, without the state machine.
"""

from __future__ import annotations

from nacl.signing import SigningKey

from .frames import AccountKind

AUTH_CONTEXT = b"blindrelay/v2/auth\x00"
PURPOSE_REGISTER = 0x01
PURPOSE_LOGIN = 0x02
KIND_BYTES = {AccountKind.USER: 0x01, AccountKind.BUSINESS: 0x02}


def register_transcript(
    relay_key: bytes,
    challenge: bytes,
    handle: str,
    kind: str,
    identity_key: bytes,
    *,
    handshake_hash: bytes,
) -> bytes:
    """Bytes a new account signs: binds handle, kind and key to this relay, this
    challenge and this channel (SPEC §4.2)."""
    return (
        _transcript_prefix(PURPOSE_REGISTER, relay_key, challenge, handshake_hash, handle)
        + bytes([KIND_BYTES[AccountKind(kind)]])
        + identity_key
    )


def login_transcript(
    relay_key: bytes, challenge: bytes, handle: str, *, handshake_hash: bytes
) -> bytes:
    """Bytes an existing account signs to log in on this channel (SPEC §4.3)."""
    return _transcript_prefix(PURPOSE_LOGIN, relay_key, challenge, handshake_hash, handle)


ROTATE_CONTEXT = b"blindrelay/v1/rotate\x00"


def rotate_transcript(
    relay_key: bytes, handle: str, old_key: bytes, new_key: bytes, issued_at: int
) -> bytes:
    """Bytes both the old and the new identity key sign to rotate (SPEC §3.4).

    ``context || relay_key || u8 len(handle) || handle || old_key || new_key ||
    issued_at (u64 BE)``: bound to this relay and this account, and fresh only
    within STATEMENT_SKEW_MS of the relay clock.
    """
    encoded = handle.encode("ascii")
    return (
        ROTATE_CONTEXT
        + relay_key
        + bytes([len(encoded)])
        + encoded
        + old_key
        + new_key
        + issued_at.to_bytes(8, "big")
    )


HANDSHAKE_HASH_BYTES = 64
"""The Noise handshake hash (BLAKE2b), the channel binding in every transcript."""


def _transcript_prefix(
    purpose: int, relay_key: bytes, challenge: bytes, handshake_hash: bytes, handle: str
) -> bytes:
    if len(handshake_hash) != HANDSHAKE_HASH_BYTES:
        raise ValueError("a handshake hash is 64 bytes")
    encoded = handle.encode("ascii")
    return (
        AUTH_CONTEXT
        + bytes([purpose])
        + relay_key
        + challenge
        + handshake_hash
        + bytes([len(encoded)])
        + encoded
    )


UNKNOWN_ACCOUNT_KEY = bytes(
    SigningKey(b"blindrelay/v1/unknown-account".ljust(32, b"\x00")).verify_key
)
"""What a LOGIN for an unknown handle is verified against (SPEC §4.3, §11.1).

A valid public key of ordinary order, so libsodium does the full verification
(a malformed or small-order key would be refused early). Its private half is
public knowledge on purpose: the verification's result is never used."""
