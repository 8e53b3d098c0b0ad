"""RFC 9162 verifier steps that the published probes cannot tell apart (SPEC §15.2).

transparency-dev's probes (test_merkle.py) corrupt a good proof and keep its root, so a
verifier that skipped a bound still refused them at the root comparison. A lying relay
signs its own roots: these cases pair each over-long or out-of-range proof with the
roots that would make it pass if the verifier skipped the step, so only the step
itself refuses them. Each was found alive by a mutation run (the step removed, every
transparency test still passing).
"""

from __future__ import annotations

import pytest

from blindrelay.protocol.errors import InvalidProof
from blindrelay.protocol.transparency import merkle

EXTRA = merkle.leaf_hash(b"a hash the relay chose")


def tree(size: int) -> tuple[list[bytes], merkle.NodeHashes]:
    """The leaf hashes of a tree of ``size`` entries and a lookup of its complete subtrees."""
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]

    def lookup(nodes):
        return {
            n: merkle.root_of(leaves[n.offset << n.level : (n.offset + 1) << n.level])
            for n in nodes
        }

    return leaves, lookup


@pytest.mark.parametrize(("index", "size"), [(0, 1), (0, 4), (3, 4), (5, 7), (6, 7)])
def test_an_inclusion_proof_longer_than_the_path_is_refused_whatever_the_root(
    index: int, size: int
) -> None:
    """Step 4a: once sn is 0 the path is over. Without it, one more hash folds into a
    root the relay can sign (its head of ``size`` then names an internal node)."""
    leaves, lookup = tree(size)
    proof = merkle.inclusion_proof(index, size, lookup)
    root = merkle.root_of(leaves)
    merkle.verify_inclusion(leaves[index], index, size, proof, root)
    with pytest.raises(InvalidProof, match="longer"):
        merkle.verify_inclusion(
            leaves[index], index, size, [*proof, EXTRA], merkle.node_hash(EXTRA, root)
        )


@pytest.mark.parametrize(("first", "second"), [(3, 4), (3, 7), (5, 8), (6, 7), (7, 13)])
def test_a_consistency_proof_longer_than_the_path_is_refused_whatever_the_roots(
    first: int, second: int
) -> None:
    """Step 6a: the same for consistency; the extra hash folds into both roots alike."""
    leaves, lookup = tree(second)
    proof = merkle.consistency_proof(first, second, lookup)
    first_root, second_root = merkle.root_of(leaves[:first]), merkle.root_of(leaves)
    merkle.verify_consistency(first, second, first_root, second_root, proof)
    lying_first = merkle.node_hash(EXTRA, first_root)  # (a first size that is not a power of
    # two: step 2 would put the first root itself in front of the path)
    with pytest.raises(InvalidProof, match="longer"):
        merkle.verify_consistency(
            first, second, lying_first, merkle.node_hash(EXTRA, second_root), [*proof, EXTRA]
        )


def test_a_consistency_proof_to_a_smaller_tree_is_refused_whatever_the_roots() -> None:
    """``first > second`` is no proof at all (a log never shrinks), even with roots chosen
    so that RFC 9162's steps, run on the swapped sizes, would reach them."""
    first_root = merkle.leaf_hash(b"three")
    second_root = merkle.node_hash(first_root, EXTRA)  # what steps 3-7 compute for (3, 2)
    with pytest.raises(InvalidProof, match="no consistency proof"):
        merkle.verify_consistency(3, 2, first_root, second_root, [first_root, EXTRA])


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_a_negative_leaf_index_is_refused(size: int) -> None:
    """Step 1 says ``leaf_index >= tree_size``; Python ints are signed, and -1 shifts
    like a leaf whose every bit is set: the last leaf's proof would prove it at -1."""
    leaves, lookup = tree(size)
    proof = merkle.inclusion_proof(size - 1, size, lookup)
    root = merkle.root_of(leaves)
    merkle.verify_inclusion(leaves[-1], size - 1, size, proof, root)
    with pytest.raises(InvalidProof, match="not in a tree"):
        merkle.verify_inclusion(leaves[-1], -1, size, proof, root)


@pytest.mark.parametrize(("first", "second"), [(0, 0), (0, 1), (0, 5), (-1, 4)])
def test_a_consistency_proof_from_the_empty_tree_or_below_is_refused(
    first: int, second: int
) -> None:
    """It would prove nothing (merkle.verify_consistency's docstring); a negative size
    would not even end: -1 right-shifts to -1 for ever (step 4)."""
    leaves, _ = tree(max(second, 0))
    root = merkle.root_of(leaves)
    with pytest.raises(InvalidProof, match="no consistency proof"):
        merkle.verify_consistency(first, second, merkle.EMPTY_ROOT, root, [root])


@pytest.mark.parametrize(("first", "second"), [(3, 4), (3, 7), (5, 6), (6, 100)])
def test_a_one_hash_consistency_proof_that_is_both_roots_is_refused(
    first: int, second: int
) -> None:
    """Step 7's ``sn is 0``: a proof cut to one hash starts fr and sr at it (step 5) and
    ends at once, so with both roots set to that hash the roots match; only the length
    of the path walked refuses it (a relay that signed one root for two sizes)."""
    with pytest.raises(InvalidProof, match="shorter"):
        merkle.verify_consistency(first, second, EXTRA, EXTRA, [EXTRA])


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_hash_of_the_wrong_length_is_refused_where_it_would_fold_into_the_root(
    length: int,
) -> None:
    """SPEC §15.2 (and test_merkle.py's STRICTER): every hash is 32 bytes. The roots here
    are computed from the odd-length hash, so the algorithm alone would accept it; only
    the length check refuses: in a proof, as the leaf, and as the first root."""
    odd = bytes(range(length))
    leaf = merkle.leaf_hash(b"x")
    with pytest.raises(InvalidProof, match="32 bytes"):
        merkle.verify_inclusion(leaf, 0, 2, [odd], merkle.node_hash(leaf, odd))
    with pytest.raises(InvalidProof, match="32 bytes"):
        merkle.verify_inclusion(odd, 0, 2, [leaf], merkle.node_hash(odd, leaf))
    with pytest.raises(InvalidProof, match="32 bytes"):
        merkle.verify_consistency(1, 2, leaf, merkle.node_hash(leaf, odd), [odd])
    with pytest.raises(InvalidProof, match="32 bytes"):
        merkle.verify_consistency(1, 2, odd, merkle.node_hash(odd, leaf), [leaf])


def test_sizes_past_a_msgpack_int_are_refused() -> None:
    """``MAX_TREE_SIZE`` (SPEC §2.5): a size no log reaches is refused, not computed on."""
    with pytest.raises(ValueError, match="out of range"):
        merkle.inclusion_ranges(0, merkle.MAX_TREE_SIZE + 1)
    with pytest.raises(ValueError, match="out of range"):
        merkle.consistency_ranges(1, merkle.MAX_TREE_SIZE + 1)
    assert len(merkle.inclusion_ranges(0, merkle.MAX_TREE_SIZE)) == 63


def test_generation_refuses_what_no_proof_exists_for() -> None:
    """The relay's side of the same edges: no consistency proof from the empty tree (not
    even to itself), and no leaf hash that is not 32 bytes in the tree."""
    for first, second in [(0, 0), (0, 1), (2, 1)]:
        with pytest.raises(ValueError, match="no consistency proof"):
            merkle.consistency_ranges(first, second)
    frontier = merkle.Frontier()
    for odd in (b"", b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(ValueError, match="32 bytes"):
            frontier.append(odd)
    assert frontier.size == 0 and frontier.root() == merkle.EMPTY_ROOT
