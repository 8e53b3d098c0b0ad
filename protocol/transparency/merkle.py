"""RFC 9162 Merkle tree hashing, proofs and their verification (SPEC §15.2).

Hashing is RFC 9162 §2.1.1: ``leaf = SHA-256(0x00 || entry)``,
``node = SHA-256(0x01 || left || right)``, and the Merkle Tree Hash (MTH) of
``n`` leaves splits at ``k``, the largest power of two below ``n``. The
verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 step by step (the comments
quote the steps), so a reviewer can hold them against the RFC line by line.

Proof *generation* never needs the leaves. Every hash a proof of a tree of any
size contains is the MTH of a range that splits into **complete subtrees** —
``[offset·2^level, (offset+1)·2^level)`` — which an append-only log computes
once and never changes: a store keeps them by ``(level, offset)``
(:class:`Node`). Generating a proof is then two pure steps with a lookup in
between, so a store answers with one query instead of loading a million
leaves: :func:`inclusion_ranges` / :func:`consistency_ranges` say which ranges
the proof holds, :func:`nodes_of` which complete subtrees each is made of, and
:func:`range_hash` folds those hashes. :class:`Frontier` is the append side:
it turns each new leaf into the complete subtrees it finishes.

Not here: what a leaf's bytes mean (:mod:`.entries`), tree heads
(:mod:`.treehead`), where nodes are stored (the relay's store).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from blindrelay.protocol.errors import InvalidProof

HASH_LEN = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() of the empty string (RFC 9162 §2.1.1)."""

MAX_TREE_SIZE = 2**63 - 1
"""Sizes and indices travel as msgpack ints (SPEC §2.5); a log never gets near it."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class Node(NamedTuple):
    """The complete subtree of leaves ``[offset·2^level, (offset+1)·2^level)``."""

    level: int
    offset: int


NodeHashes = Callable[[Sequence[Node]], Mapping[Node, bytes]]
"""A store's lookup: the hashes of the given complete subtrees, all of them present."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """k: the largest power of two smaller than ``n`` (``n`` > 1), RFC 9162 §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The MTH of a list of leaf hashes, computed from scratch (an auditor's way).

    Bottom-up, level by level: pairing left to right and carrying an odd last
    node up unchanged gives the same tree as RFC 9162's recursive split at k.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def nodes_of(start: int, end: int) -> list[Node]:
    """The complete subtrees a range of a proof is made of, largest (leftmost) first.

    Only ranges that RFC 9162's recursion produces are valid here: ``start`` is
    a multiple of a power of two at least ``end - start`` (every range of
    :func:`inclusion_ranges`, :func:`consistency_ranges` and ``[0, size)``).
    """
    if not 0 <= start < end:
        raise ValueError(f"empty or negative range [{start}, {end})")
    nodes = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start % (1 << level):
            raise ValueError(f"range [{start}, {end}) is not aligned as RFC 9162 splits")
        nodes.append(Node(level, start >> level))
        start += 1 << level
    return nodes


def range_hash(nodes: Sequence[Node], hashes: Mapping[Node, bytes]) -> bytes:
    """MTH of a range from its complete subtrees (:func:`nodes_of`).

    The split at k puts the largest complete subtree on the left and the rest on
    the right, so the MTH folds the pieces from the right.
    """
    result = hashes[nodes[-1]]
    for node in reversed(nodes[:-1]):
        result = node_hash(hashes[node], result)
    return result


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose MTHs form PATH(index, D[size]), in proof order (RFC 9162 §2.1.3.1).

    ``PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])`` for m < k, and
    ``PATH(m - k, D[k:n]) : MTH(D[0:k])`` otherwise: the sibling of each split,
    deepest first.
    """
    _check_size(size)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    siblings = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            siblings.append((start + k, end))
            end = start + k
        else:
            siblings.append((start, start + k))
            start += k
    siblings.reverse()
    return siblings


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The ranges whose MTHs form PROOF(first, D[second]), in proof order (RFC 9162 §2.1.4.1).

    ``SUBPROOF(m, D[m], true) = {}``, ``SUBPROOF(m, D[m], false) = {MTH(D[m])}``;
    for m ≤ k ``SUBPROOF(m, D[0:k], b) : MTH(D[k:n])``, else
    ``SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])``. Defined for
    ``0 < first ≤ second`` (equal sizes: the empty proof).
    """
    _check_size(second)
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to {second}")
    appended = []
    start, end, m, whole = 0, second, first, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            appended.append((start + k, end))
            end = start + k
        else:
            appended.append((start, start + k))
            m -= k
            start += k
            whole = False
    appended.reverse()
    return appended if whole else [(start, end), *appended]


def proof_nodes(ranges: Iterable[tuple[int, int]]) -> list[Node]:
    """Every complete subtree the ranges need, each once: what a store looks up."""
    needed: dict[Node, None] = {}
    for start, end in ranges:
        needed.update(dict.fromkeys(nodes_of(start, end)))
    return list(needed)


def assemble(ranges: Sequence[tuple[int, int]], lookup: NodeHashes) -> list[bytes]:
    """The proof's hashes: one lookup for every node the ranges need, then folding."""
    hashes = lookup(proof_nodes(ranges))
    return [range_hash(nodes_of(start, end), hashes) for start, end in ranges]


def inclusion_proof(index: int, size: int, lookup: NodeHashes) -> list[bytes]:
    """PATH(index, D[size]) from stored complete subtrees."""
    return assemble(inclusion_ranges(index, size), lookup)


def consistency_proof(first: int, second: int, lookup: NodeHashes) -> list[bytes]:
    """PROOF(first, D[second]) from stored complete subtrees."""
    return assemble(consistency_ranges(first, second), lookup)


def tree_root(size: int, lookup: NodeHashes) -> bytes:
    """MTH(D[size]) from stored complete subtrees (at most log2(size) of them)."""
    _check_size(size)
    if size == 0:
        return EMPTY_ROOT
    return assemble([(0, size)], lookup)[0]


class Frontier:
    """The right edge of an append-only tree: the complete subtrees of ``[0, size)``.

    ``append`` returns every complete subtree the new leaf finishes — the leaf
    itself at level 0 and each parent it completes — which is what a store
    writes with the entry; nothing stored ever changes afterwards. Start from an
    empty tree, or from a stored one with :meth:`resume` and the hashes of
    ``nodes_of(0, size)``.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self) -> None:
        self.size = 0
        self._hashes: list[bytes] = []  # the complete subtrees of [0, size), largest first

    @classmethod
    def resume(cls, size: int, lookup: NodeHashes) -> Frontier:
        frontier = cls()
        if size:
            nodes = nodes_of(0, size)
            hashes = lookup(nodes)
            frontier._hashes = [hashes[node] for node in nodes]
            frontier.size = size
        return frontier

    def append(self, entry_leaf_hash: bytes) -> list[tuple[Node, bytes]]:
        """Add one leaf; the complete subtrees it finishes, leaf first."""
        if len(entry_leaf_hash) != HASH_LEN:
            raise ValueError(f"a leaf hash is {HASH_LEN} bytes")
        index = self.size
        _check_size(index + 1)
        made = [(Node(0, index), entry_leaf_hash)]
        current = entry_leaf_hash
        level = 0
        while index & 1:  # a right child: it completes its parent with the node to its left
            current = node_hash(self._hashes.pop(), current)
            index >>= 1
            level += 1
            made.append((Node(level, index), current))
        self._hashes.append(current)
        self.size += 1
        return made

    def edge_hashes(self) -> list[bytes]:
        """The hashes of ``nodes_of(0, size)``, largest subtree first: what
        :meth:`resume` takes back (a store may keep them instead of every node)."""
        return list(self._hashes)

    def root(self) -> bytes:
        """MTH of the tree so far."""
        if not self._hashes:
            return EMPTY_ROOT
        result = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            result = node_hash(left, result)
        return result


def verify_inclusion(
    entry_leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2; raises :class:`InvalidProof` unless the leaf is in the tree."""
    _check_proof_hashes(entry_leaf_hash, root, proof)
    # 1. "If leaf_index is greater than or equal to tree_size, then fail the proof verification."
    if not 0 <= index < size:
        raise InvalidProof(f"leaf index {index} is not in a tree of size {size}")
    # 2. "Set fn to leaf_index and sn to tree_size - 1."
    fn, sn = index, size - 1
    # 3. "Set r to hash."
    r = entry_leaf_hash
    # 4. "For each value p in the inclusion_path array:"
    for p in proof:
        # a. "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0:
            raise InvalidProof("inclusion proof is longer than the path")
        # b. "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn & 1 or fn == sn:
            # i. "Set r to HASH(0x01 || p || r)."
            r = node_hash(p, r)
            # ii. "If LSB(fn) is not set, then right-shift both fn and sn equally until
            #      either LSB(fn) is set or fn is 0."
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            # "Otherwise: i. Set r to HASH(0x01 || r || p)."
            r = node_hash(r, p)
        # c. "Finally, right-shift both fn and sn one time."
        fn >>= 1
        sn >>= 1
    # 5. "If sn is equal to 0 and r and the root_hash are equal, then the log has proven the
    #     inclusion of hash. Otherwise, fail the proof verification."
    if sn != 0:
        raise InvalidProof("inclusion proof is shorter than the path")
    if r != root:
        raise InvalidProof("inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2; raises :class:`InvalidProof` unless the second tree extends the first.

    The RFC defines proofs for ``0 < first < second``. At the edges: equal sizes
    are consistent with the empty proof exactly when the roots are equal, and a
    proof *from* the empty tree is refused — it would prove nothing, and a
    verifier that accepted one would accept any second tree.
    """
    _check_proof_hashes(first_root, second_root, proof)
    if not 0 < first <= second:
        raise InvalidProof(f"no consistency proof from size {first} to {second}")
    if first == second:
        if proof:
            raise InvalidProof("equal sizes take the empty proof")
        if first_root != second_root:
            raise InvalidProof("equal sizes with different roots")
        return
    # 1. "If consistency_path is an empty array, stop and fail the proof verification."
    if not proof:
        raise InvalidProof("empty consistency proof")
    path = list(proof)
    # 2. "If first is an exact power of 2, then prepend first_hash to the consistency_path
    #     array."
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    # 3. "Set fn to first - 1 and sn to second - 1."
    fn, sn = first - 1, second - 1
    # 4. "If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set."
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. "Set both fr and sr to the first value in the consistency_path array."
    fr = sr = path[0]
    # 6. "For each subsequent value c in the consistency_path array:"
    for c in path[1:]:
        # a. "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0:
            raise InvalidProof("consistency proof is longer than the path")
        # b. "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn & 1 or fn == sn:
            # i. "Set fr to HASH(0x01 || c || fr)."  ii. "Set sr to HASH(0x01 || c || sr)."
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # iii. "If LSB(fn) is not set, then right-shift both fn and sn equally until
            #       either LSB(fn) is set or fn is 0."
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            # "Otherwise: i. Set sr to HASH(0x01 || sr || c)."
            sr = node_hash(sr, c)
        # c. "Finally, right-shift both fn and sn one time."
        fn >>= 1
        sn >>= 1
    # 7. "verify that the fr calculated is equal to the first_hash supplied, that the sr
    #     calculated is equal to the second_hash supplied, and that sn is 0."
    if sn != 0:
        raise InvalidProof("consistency proof is shorter than the path")
    if fr != first_root:
        raise InvalidProof("consistency proof does not lead to the first root")
    if sr != second_root:
        raise InvalidProof("consistency proof does not lead to the second root")


def _check_size(size: int) -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise ValueError(f"tree size {size} out of range")


def _check_hash(value: bytes) -> None:
    if len(value) != HASH_LEN:
        raise InvalidProof(f"a hash is {HASH_LEN} bytes, not {len(value)}")


def _check_proof_hashes(a: bytes, b: bytes, proof: Sequence[bytes]) -> None:
    for value in (a, b, *proof):
        _check_hash(value)
