"""RFC 9162 hashing and proofs (SPEC §15.2) against published data and a naive oracle.

The differential part runs every inclusion and consistency probe of
transparency-dev/merkle's ``testdata/`` (README.md here says why that source)
through our verifiers and expects exactly its verdicts, and rebuilds its
reference tree (leaf inputs, node hashes, root hashes) with our hashing and our
proof generation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from blindrelay.protocol.errors import InvalidProof
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.merkle import Frontier, Node

DATA = json.loads((Path(__file__).parent / "transparency_dev_merkle.json").read_text())
PROBES = DATA["probes"]
CONSTANTS = DATA["testonly_constants"]
LEAVES = [bytes.fromhex(x) for x in CONSTANTS["leaf_inputs"]]


def b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def b64s(values: list[str] | None) -> list[bytes]:
    return [b64(v) for v in values or []]


STRICTER = {
    "testdata/consistency/additional/sizes-are-equal-one-and-proof-is-empty.json":
        "its two equal 'roots' are 12 bytes: transparency-dev compares them without checking "
        "their length, we refuse any hash that is not 32 bytes before comparing",
}
"""The probes whose verdict we differ on, on purpose, with the reason."""


def well_formed(p: dict) -> bool:
    values = [p.get(k) for k in ("root", "leafHash", "root1", "root2")] + (p["proof"] or [])
    return all(len(b64(v)) == 32 for v in values if v is not None)


def verdict(check, *args) -> bool:
    """True when the check raises InvalidProof (the probe's wantErr)."""
    try:
        check(*args)
    except InvalidProof:
        return True
    return False


@pytest.mark.parametrize("name", sorted(n for n in PROBES if n.startswith("testdata/inclusion/")))
def test_inclusion_verdicts_agree_with_transparency_dev(name: str) -> None:
    p = PROBES[name]
    args = (b64(p["leafHash"]), p["leafIdx"], p["treeSize"], b64s(p["proof"]), b64(p["root"]))
    assert verdict(merkle.verify_inclusion, *args) is p["wantErr"], p["desc"]


@pytest.mark.parametrize("name", sorted(n for n in PROBES if n.startswith("testdata/consistency/")))
def test_consistency_verdicts_agree_with_transparency_dev(name: str) -> None:
    p = PROBES[name]
    args = (p["size1"], p["size2"], b64(p["root1"]), b64(p["root2"]), b64s(p["proof"]))
    want = True if name in STRICTER else p["wantErr"]
    assert verdict(merkle.verify_consistency, *args) is want, p["desc"]


def test_the_probes_include_both_verdicts() -> None:
    """The differential test could not pass by accepting or refusing everything, nor by
    refusing malformed hashes: most refusals come from the RFC's algorithm itself."""
    wants = [p["wantErr"] for p in PROBES.values() if well_formed(p)]
    assert wants.count(True) > 100 and wants.count(False) > 10
    assert all(not well_formed(PROBES[name]) for name in STRICTER)


def reference_lookup(leaves: list[bytes]):
    """Complete subtrees computed naively from the leaves (the RFC's recursive MTH)."""

    def mth(items: list[bytes]) -> bytes:
        if not items:
            return hashlib.sha256(b"").digest()
        if len(items) == 1:
            return merkle.leaf_hash(items[0])
        k = 1 << ((len(items) - 1).bit_length() - 1)
        return merkle.node_hash(mth(items[:k]), mth(items[k:]))

    def lookup(nodes):
        return {n: mth(leaves[n.offset << n.level : (n.offset + 1) << n.level]) for n in nodes}

    return lookup, mth


def test_reference_tree_hashes_match_transparency_dev() -> None:
    frontier = Frontier()
    made: dict[Node, bytes] = {}
    for size, leaf in enumerate(LEAVES, start=1):
        made.update(frontier.append(merkle.leaf_hash(leaf)))
        assert frontier.root().hex() == CONSTANTS["root_hashes_from_size_1"][size - 1]
        assert merkle.root_of([merkle.leaf_hash(x) for x in LEAVES[:size]]) == frontier.root()
    for level, hashes in enumerate(CONSTANTS["node_hashes_by_level"]):
        for index, value in enumerate(hashes):
            assert made[Node(level, index)].hex() == value
    assert len(made) == sum(len(h) for h in CONSTANTS["node_hashes_by_level"])
    assert merkle.root_of([]) == merkle.EMPTY_ROOT == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_generated_proofs_equal_the_published_happy_paths() -> None:
    lookup, _ = reference_lookup(LEAVES)
    seen = 0
    for p in PROBES.values():
        if p["desc"] != "happy path":
            continue
        if "leafIdx" in p and p["treeSize"] <= len(LEAVES):
            got = merkle.inclusion_proof(p["leafIdx"], p["treeSize"], lookup)
            assert got == b64s(p["proof"])
            assert merkle.tree_root(p["treeSize"], lookup) == b64(p["root"])
            seen += 1
        elif "size1" in p and p["size2"] <= len(LEAVES):
            assert merkle.consistency_proof(p["size1"], p["size2"], lookup) == b64s(p["proof"])
            seen += 1
    assert seen >= 8


@pytest.mark.parametrize("size", [*range(1, 34), 64, 65, 100, 127, 128, 129])
def test_every_generated_proof_verifies_and_a_flipped_bit_does_not(size: int) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(size)]
    lookup, mth = reference_lookup(leaves)
    root = mth(leaves)
    assert merkle.tree_root(size, lookup) == root
    for index in range(size):
        proof = merkle.inclusion_proof(index, size, lookup)
        merkle.verify_inclusion(merkle.leaf_hash(leaves[index]), index, size, proof, root)
        if proof:
            bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
            with pytest.raises(InvalidProof):
                merkle.verify_inclusion(merkle.leaf_hash(leaves[index]), index, size, bad, root)
    for first in range(1, size + 1):
        proof = merkle.consistency_proof(first, size, lookup)
        merkle.verify_consistency(first, size, mth(leaves[:first]), root, proof)
        if proof:
            with pytest.raises(InvalidProof):
                merkle.verify_consistency(first, size, mth(leaves[:first]), root, proof[:-1])


def test_proof_sizes_are_logarithmic() -> None:
    size = 1_000_000
    assert max(len(merkle.inclusion_ranges(i, size)) for i in (0, 1, 524_287, 999_999)) == 20
    assert len(merkle.consistency_ranges(999_998, size)) <= 2 * 20
    # a store answers a proof with one lookup of at most a few dozen complete subtrees
    assert len(merkle.proof_nodes(merkle.inclusion_ranges(0, size))) <= 2 * 20


def test_frontier_resumes_from_stored_nodes() -> None:
    leaves = [bytes([i]) for i in range(11)]
    lookup, mth = reference_lookup(leaves)
    frontier = Frontier.resume(7, lookup)
    assert frontier.root() == mth(leaves[:7])
    for leaf in leaves[7:]:
        for node, value in frontier.append(merkle.leaf_hash(leaf)):
            assert lookup([node])[node] == value
    assert frontier.root() == mth(leaves) and frontier.size == 11


def test_ranges_that_rfc_9162_never_splits_are_refused() -> None:
    with pytest.raises(ValueError):
        merkle.nodes_of(1, 3)
    with pytest.raises(ValueError):
        merkle.inclusion_ranges(5, 5)
    with pytest.raises(ValueError):
        merkle.consistency_ranges(0, 5)


def test_a_hash_of_the_wrong_length_is_an_invalid_proof() -> None:
    leaf = merkle.leaf_hash(b"x")
    with pytest.raises(InvalidProof):
        merkle.verify_inclusion(leaf, 0, 2, [b"\x00" * 31], leaf)
    with pytest.raises(InvalidProof):
        merkle.verify_consistency(1, 2, leaf, leaf, [leaf + b"\x00"])
