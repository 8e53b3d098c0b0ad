"""Signed tree heads: the relay's word on the log's size and root (SPEC §15.3).

A tree head is a signed object (§14) with context ``"blindrelay/v1/tree-head"``,
signed by the relay's own key (the one HELLO announces), so a tree head is
evidence: two heads signed by one relay that no consistency proof can join
prove that the relay showed two histories. Verification is as for every signed
object — the signature over the exact bytes first, then strict decoding.

:func:`check_extends` is what a client or auditor does with a newer head: the
sizes never shrink, equal sizes mean equal roots, and otherwise a consistency
proof must join them (RFC 9162 §2.1.4.2). Its failure is the evidence of a
fork; it names both heads.

Not here: when the relay signs a head (``STH_INTERVAL``, the server), what a
client keeps (the SDK).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from blindrelay.protocol import limits
from blindrelay.protocol.errors import InvalidProof, InvalidTreeHead, MalformedFrame, ProtocolError
from blindrelay.protocol.frames import MAX_TIME_MS
from blindrelay.protocol.signed import SignedBody, open_signed

from . import merkle

MAX_TREE_HEAD_BYTES = limits.MAX_TREE_HEAD_BYTES
"""A signed head is ~160 bytes (four fields and a signature); the bound leaves
room for the non-canonical encodings a verifier must still accept (§14)."""


@dataclass(frozen=True, slots=True)
class TreeHead(SignedBody):
    """The log had ``size`` entries with root ``root`` at the relay's ``timestamp``."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/tree-head"
    MAX_BYTES: ClassVar[int] = MAX_TREE_HEAD_BYTES

    v: int
    size: int
    root: bytes
    timestamp: int

    def __post_init__(self) -> None:
        if self.v != 1:
            raise MalformedFrame("v: must be 1")
        if not 0 <= self.size <= merkle.MAX_TREE_SIZE:
            raise MalformedFrame("size: out of range")
        if len(self.root) != merkle.HASH_LEN:
            raise MalformedFrame(f"root: must be exactly {merkle.HASH_LEN} bytes")
        if not 0 <= self.timestamp <= MAX_TIME_MS:
            raise MalformedFrame("timestamp: out of range")
        if self.size == 0 and self.root != merkle.EMPTY_ROOT:
            raise MalformedFrame("root: an empty log's root is SHA-256 of nothing")


def sign_tree_head(signer: Callable[[bytes], bytes], size: int, root: bytes, now_ms: int) -> bytes:
    """The signed head's bytes, as the relay publishes them."""
    return TreeHead(v=1, size=size, root=root, timestamp=now_ms).sign(signer)


def open_tree_head(data: bytes, relay_key: bytes) -> TreeHead:
    """Verify a signed head under the relay's key; :class:`InvalidTreeHead` otherwise."""
    try:
        return open_signed(TreeHead, data, relay_key)
    except ProtocolError as exc:
        raise InvalidTreeHead(exc.detail) from None


def check_extends(older: TreeHead, newer: TreeHead, proof: Sequence[bytes]) -> None:
    """Raise :class:`InvalidProof` unless ``newer`` is ``older``'s log with entries added.

    Both heads are already verified. A newer head with fewer entries, or a
    timestamp before the older's, does not extend it; nor do equal sizes with
    different roots. An empty log is extended by every log.
    """
    if newer.size < older.size:
        raise InvalidProof(f"tree head of size {newer.size} after one of size {older.size}")
    if newer.timestamp < older.timestamp:
        raise InvalidProof("tree head timestamps go backwards")
    if older.size == 0:
        if proof:
            raise InvalidProof("a proof from the empty tree proves nothing")
        return
    merkle.verify_consistency(older.size, newer.size, older.root, newer.root, proof)
