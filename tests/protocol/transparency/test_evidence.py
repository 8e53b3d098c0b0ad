"""A logged consent statement proven offline with the relay's key alone (SPEC §15.1)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import InvalidProof, InvalidStatement, InvalidTreeHead
from blindrelay.protocol.signed import make_statement
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.entries import (
    KeyBinding,
    StatementLogged,
    statement_commitment,
)
from blindrelay.protocol.transparency.evidence import (
    ConsentEvidence,
    evidence_from_json,
    evidence_to_json,
    statement_entry,
    verify_consent_evidence,
)
from blindrelay.protocol.transparency.treehead import sign_tree_head

RELAY = IdentityKeyPair(b"\xc0" * 32)
ALICE = IdentityKeyPair(b"\xa0" * 32)
T0 = 1_790_000_000_000


def statement(nonce: int) -> bytes:
    return make_statement(
        "grant", signer="alice", signer_key=ALICE.public, target="skyways.air",
        relay_key=RELAY.public, now_ms=T0, rng=lambda n: bytes([nonce]) * n,
        categories=("marketing",),
    ).sign(ALICE.sign)  # fmt: skip


def evidence(index: int = 3) -> ConsentEvidence:
    statements = [statement(i) for i in range(6)]
    entries = [StatementLogged(v=1, commitment=statement_commitment(s), at=T0 + i).to_bytes()
               for i, s in enumerate(statements)]  # fmt: skip
    frontier, nodes = merkle.Frontier(), {}
    for e in entries:
        nodes.update(frontier.append(merkle.leaf_hash(e)))
    proof = merkle.inclusion_proof(index, 6, lambda wanted: {n: nodes[n] for n in wanted})
    head = sign_tree_head(RELAY.sign, 6, frontier.root(), T0 + 10)
    return ConsentEvidence(statements[index], entries[index], index, tuple(proof), head)


def test_a_logged_statement_is_proven_with_the_relay_key_alone() -> None:
    verified = verify_consent_evidence(evidence(), RELAY.public, ALICE.public)
    assert verified.statement.categories == ("marketing",) and verified.logged_at == T0 + 3
    assert verified.tree_head.size == 6


def test_any_altered_part_fails() -> None:
    good = evidence()
    with pytest.raises(InvalidStatement):  # the verifier knows another key for alice
        verify_consent_evidence(good, RELAY.public, RELAY.public)
    with pytest.raises(InvalidProof):  # another statement than the one logged
        verify_consent_evidence(dataclasses.replace(good, statement=statement(9)), RELAY.public)
    with pytest.raises(InvalidProof):  # the entry of another leaf
        verify_consent_evidence(dataclasses.replace(good, index=2), RELAY.public)
    foreign = sign_tree_head(ALICE.sign, 6, merkle.EMPTY_ROOT[::-1], T0)
    with pytest.raises(InvalidTreeHead):  # a head not signed by this relay
        verify_consent_evidence(dataclasses.replace(good, tree_head=foreign), RELAY.public)


def test_the_holder_rebuilds_the_entry_and_the_file_round_trips() -> None:
    """SPEC §15.1: a statement's entry is dated by its own issued_at, so whoever holds
    the statement rebuilds it byte for byte (§15.5: and finds it by its leaf hash)."""
    signed = statement(1)
    assert (
        statement_entry(signed)
        == StatementLogged(v=1, commitment=statement_commitment(signed), at=T0).to_bytes()
    )
    good = evidence()
    assert evidence_from_json(evidence_to_json(good)) == good
    for text in ("[]", "{}", '{"statement": "zz"}', "not json",
                 evidence_to_json(good).replace('"index": 3', '"index": -1')):  # fmt: skip
        with pytest.raises(ValueError):
            evidence_from_json(text)


def test_a_file_nested_too_deeply_is_not_an_evidence_file() -> None:
    """An evidence file comes from whoever hands it over. JSON nested past Python's
    recursion limit raised RecursionError, which `blindrelay verify-consent` met as an
    'unexpected error' with a traceback file; now it is the one-line ValueError."""
    with pytest.raises(ValueError, match="not an evidence file"):
        evidence_from_json("[" * 100_000 + "]" * 100_000)


def test_a_proven_entry_that_is_not_a_statement_s_is_an_invalid_proof() -> None:
    """The entry must be a statement's commitment (§15.1): a key binding, proven in the
    same log, is refused as InvalidProof, not met as an AttributeError."""
    binding = KeyBinding(
        v=1, handle="skyways.air", kind="business", identity_key=ALICE.public, at=T0
    ).to_bytes()
    frontier = merkle.Frontier()
    frontier.append(merkle.leaf_hash(binding))
    head = sign_tree_head(RELAY.sign, 1, frontier.root(), T0 + 10)
    lying = ConsentEvidence(statement(1), binding, 0, (), head)
    with pytest.raises(InvalidProof, match="not a statement"):
        verify_consent_evidence(lying, RELAY.public, ALICE.public)


@pytest.mark.parametrize("index", ["true", "3.0", '"3"'])
def test_an_evidence_file_s_index_is_a_json_integer(index: str) -> None:
    """``true`` is an int to Python (bool subclasses it): it would be read as index 1."""
    text = evidence_to_json(evidence()).replace('"index": 3', f'"index": {index}')
    with pytest.raises(ValueError, match="index"):
        evidence_from_json(text)


def test_an_evidence_file_s_proof_is_a_json_array() -> None:
    """A proof given as an object was read by its keys, as a string by its characters'
    pairs: a file no tool writes taken for one (noticed by the 2026-12-07 fuzzing).
    Only an array of hex strings is a proof."""
    fields = json.loads(evidence_to_json(evidence()))
    assert fields["proof"], "the fixture's proof has nodes"
    for proof in ({node: 0 for node in fields["proof"]}, "".join(fields["proof"])):
        with pytest.raises(ValueError, match="proof"):
            evidence_from_json(json.dumps({**fields, "proof": proof}))
