"""Signed tree heads (SPEC §15.3): signing, verification, and what extends what."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from blindrelay.protocol.codec import decode_object, encode_object
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import InvalidProof, InvalidTreeHead, MalformedFrame
from blindrelay.protocol.frames import MAX_TIME_MS
from blindrelay.protocol.signed import SignedBody, SignedObject
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.treehead import (
    TreeHead,
    check_extends,
    open_tree_head,
    sign_tree_head,
)

RELAY = IdentityKeyPair(b"\xc0" * 32)
OTHER = IdentityKeyPair(b"\xc1" * 32)
T0 = 1_790_000_000_000


def grow(count: int) -> tuple[merkle.Frontier, dict]:
    frontier, stored = merkle.Frontier(), {}
    for i in range(count):
        stored.update(frontier.append(merkle.leaf_hash(i.to_bytes(4, "big"))))
    return frontier, stored


def head(size: int, root: bytes, at: int) -> TreeHead:
    return open_tree_head(sign_tree_head(RELAY.sign, size, root, at), RELAY.public)


def test_a_signed_head_opens_with_the_relay_key_only() -> None:
    data = sign_tree_head(RELAY.sign, 5, b"\x01" * 32, T0)
    assert open_tree_head(data, RELAY.public) == TreeHead(
        v=1, size=5, root=b"\x01" * 32, timestamp=T0
    )
    with pytest.raises(InvalidTreeHead):
        open_tree_head(data, OTHER.public)
    outer = decode_object(SignedObject, data, max_bytes=256)
    # the same signature over a body claiming another size
    forged = TreeHead(v=1, size=6, root=b"\x01" * 32, timestamp=T0)
    with pytest.raises(InvalidTreeHead):
        open_tree_head(
            encode_object(SignedObject(body=encode_object(forged), sig=outer.sig)), RELAY.public
        )


def test_the_signature_is_domain_separated() -> None:
    body = encode_object(TreeHead(v=1, size=1, root=b"\x02" * 32, timestamp=T0))
    # a signature over the body without the context (or with another one) does not open
    for message in (body, b"blindrelay/v1/statement\x00" + body):
        data = encode_object(SignedObject(body=body, sig=RELAY.sign(message)))
        with pytest.raises(InvalidTreeHead):
            open_tree_head(data, RELAY.public)


def test_an_empty_log_has_the_empty_root() -> None:
    assert head(0, merkle.EMPTY_ROOT, T0).size == 0
    with pytest.raises(MalformedFrame):
        TreeHead(v=1, size=0, root=b"\x00" * 32, timestamp=T0)


def test_a_grown_log_extends_its_earlier_heads_with_a_consistency_proof() -> None:
    frontier, stored = grow(13)
    lookup = lambda nodes: {n: stored[n] for n in nodes}  # noqa: E731
    newest = head(13, frontier.root(), T0 + 13)
    for size in range(0, 14):
        older = head(size, merkle.tree_root(size, lookup), T0 + size)
        proof = merkle.consistency_proof(size, 13, lookup) if size else []
        check_extends(older, newest, proof)


def test_a_fork_a_shrink_or_a_clock_going_back_does_not_extend() -> None:
    frontier, stored = grow(8)
    lookup = lambda nodes: {n: stored[n] for n in nodes}  # noqa: E731
    older = head(5, merkle.tree_root(5, lookup), T0)
    proof = merkle.consistency_proof(5, 8, lookup)
    forked = head(8, merkle.leaf_hash(b"another history"), T0 + 1)
    with pytest.raises(InvalidProof):
        check_extends(older, forked, proof)
    newer = head(8, frontier.root(), T0 + 1)
    with pytest.raises(InvalidProof):
        check_extends(newer, older, proof)
    with pytest.raises(InvalidProof):
        check_extends(older, head(8, frontier.root(), T0 - 1), proof)
    with pytest.raises(InvalidProof):  # same size, other root: two histories
        check_extends(older, head(5, merkle.leaf_hash(b"x"), T0 + 2), [])
    with pytest.raises(InvalidProof):
        check_extends(head(0, merkle.EMPTY_ROOT, T0), newer, proof)


@dataclass(frozen=True, slots=True)
class LooseHead(SignedBody):
    """A tree head's fields without TreeHead's checks: what a lying relay can sign."""

    CONTEXT: ClassVar[bytes] = TreeHead.CONTEXT
    MAX_BYTES: ClassVar[int] = TreeHead.MAX_BYTES

    v: int
    size: int
    root: bytes
    timestamp: int


@pytest.mark.parametrize(
    "fields",
    [
        {"v": 2},
        {"v": 0},
        {"size": -1},
        {"size": merkle.MAX_TREE_SIZE + 1},
        {"root": b"\x01" * 31},
        {"root": b"\x01" * 33},
        {"timestamp": -1},
        {"timestamp": MAX_TIME_MS + 1},
        {"size": 0, "root": b"\x01" * 32},
    ],
)
def test_a_head_the_relay_signed_with_a_field_out_of_range_does_not_open(fields: dict) -> None:
    """SPEC §15.3: the signature is checked first, then the body strictly, so even the
    relay's own signature does not make a head of version 2, a negative or impossible
    size, a short root or a time out of range, nor a non-empty root for an empty log."""
    good = {"v": 1, "size": 5, "root": b"\x01" * 32, "timestamp": T0}
    assert open_tree_head(LooseHead(**good).sign(RELAY.sign), RELAY.public).size == 5
    with pytest.raises(InvalidTreeHead):
        open_tree_head(LooseHead(**(good | fields)).sign(RELAY.sign), RELAY.public)


def test_a_proof_from_the_empty_tree_is_refused_and_none_is_needed() -> None:
    """check_extends: the empty log is extended by every log with no proof at all, and a
    relay that sends one anyway is refused (it would prove nothing)."""
    frontier, _ = grow(3)
    empty, newer = head(0, merkle.EMPTY_ROOT, T0), head(3, frontier.root(), T0 + 1)
    check_extends(empty, newer, [])
    with pytest.raises(InvalidProof, match="empty tree"):
        check_extends(empty, newer, [frontier.root()])


def test_heads_of_one_time_extend_each_other() -> None:
    """Two heads signed in the same millisecond are not a clock going back."""
    frontier, stored = grow(6)
    lookup = lambda nodes: {n: stored[n] for n in nodes}  # noqa: E731
    older = head(4, merkle.tree_root(4, lookup), T0)
    check_extends(older, head(6, frontier.root(), T0), merkle.consistency_proof(4, 6, lookup))
    check_extends(older, older, [])
