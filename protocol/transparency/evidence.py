"""Proof that a consent statement was logged, checked offline (SPEC §15.1).

A business that must demonstrate a customer's consent (or a user a revocation)
hands a third party a :class:`ConsentEvidence`: the signed statement, the log
entry that commits to it, the entry's index, its inclusion proof and a signed
tree head. :func:`verify_consent_evidence` needs nothing else but the relay's
public key: it checks the statement's signature, that the entry commits to
exactly those bytes, the tree head's signature, and the inclusion proof. What
that shows: the statement existed, signed by ``signer_key``, and the relay had
accepted it by the tree head's timestamp.

Not here: fetching the proof (the SDK), the audit of a whole log (:mod:`.audit`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from blindrelay.protocol.business import Badge
from blindrelay.protocol.errors import InvalidProof
from blindrelay.protocol.signed import ConsentStatement, unverified_body, verify_statement

from . import merkle
from .entries import BadgeIssued, StatementLogged, decode_entry, statement_commitment
from .treehead import TreeHead, open_tree_head


@dataclass(frozen=True, slots=True)
class ConsentEvidence:
    statement: bytes
    """The signed statement, byte for byte as the relay accepted it (§7.4)."""
    entry: bytes
    """The log entry committing to it (§15.1, statement logged)."""
    index: int
    proof: tuple[bytes, ...]
    tree_head: bytes


@dataclass(frozen=True, slots=True)
class VerifiedConsent:
    statement: ConsentStatement
    logged_at: int
    """The relay's clock when it accepted the statement (the entry's ``at``)."""
    tree_head: TreeHead


def verify_consent_evidence(
    evidence: ConsentEvidence, relay_key: bytes, signer_key: bytes | None = None
) -> VerifiedConsent:
    """Raise unless ``evidence`` holds; ``signer_key``: the key the verifier knows for the
    signer (default: the one the statement names, which then proves only that whoever
    held it signed). :class:`~blindrelay.protocol.errors.InvalidStatement`,
    :class:`InvalidProof`, ``InvalidTreeHead`` or ``MalformedLogEntry`` name the failure."""
    named = signer_key
    if named is None:
        named = unverified_body(ConsentStatement, evidence.statement).signer_key
    statement = verify_statement(evidence.statement, expected_key=named, relay_key=relay_key)
    entry = decode_entry(evidence.entry)
    if not isinstance(entry, StatementLogged):
        raise InvalidProof("the entry is not a statement's")
    if entry.commitment != statement_commitment(evidence.statement):
        raise InvalidProof("the entry commits to other bytes")
    head = open_tree_head(evidence.tree_head, relay_key)
    merkle.verify_inclusion(
        merkle.leaf_hash(evidence.entry), evidence.index, head.size, evidence.proof, head.root
    )
    return VerifiedConsent(statement=statement, logged_at=entry.at, tree_head=head)


def statement_entry(signed_statement: bytes) -> bytes:
    """The log entry the relay appended for ``signed_statement`` (§15.1): its commitment,
    dated by the statement's ``issued_at``; what its holder asks the relay to find
    (LOG_INCLUSION_FETCH)."""
    issued_at = unverified_body(ConsentStatement, signed_statement).issued_at
    commitment = statement_commitment(signed_statement)
    return StatementLogged(v=1, commitment=commitment, at=issued_at).to_bytes()


def badge_entry(signed_badge: bytes) -> bytes:
    """The log entry the relay appended when the operator issued ``signed_badge``
    (§15.1, badge issued): rebuilt from the badge alone, dated by its ``issued_at``;
    what a client asks the relay to find (LOG_INCLUSION_FETCH) before it shows the
    badge as verified (§15.6 rule 6)."""
    badge = unverified_body(Badge, signed_badge)
    return BadgeIssued(
        v=1, handle=badge.handle, serial=badge.serial, badge=signed_badge, at=badge.issued_at
    ).to_bytes()


def evidence_to_json(evidence: ConsentEvidence) -> str:
    """The evidence file (§15.5): a JSON object of hex strings and the index."""
    return json.dumps(
        {
            "statement": evidence.statement.hex(),
            "entry": evidence.entry.hex(),
            "index": evidence.index,
            "proof": [node.hex() for node in evidence.proof],
            "tree_head": evidence.tree_head.hex(),
        },
        indent=2,
    )


def evidence_from_json(text: str) -> ConsentEvidence:
    """Read an evidence file; ValueError (one line) if it is not one."""
    try:
        raw = json.loads(text)
        index = raw["index"]
        if type(index) is not int or index < 0:
            raise ValueError("index must be a non-negative integer")
        if type(raw["proof"]) is not list:  # an object would be read by its keys
            raise ValueError("proof must be an array of hex strings")
        return ConsentEvidence(
            statement=bytes.fromhex(raw["statement"]),
            entry=bytes.fromhex(raw["entry"]),
            index=index,
            proof=tuple(bytes.fromhex(node) for node in raw["proof"]),
            tree_head=bytes.fromhex(raw["tree_head"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an evidence file: missing or mistyped {exc}") from None
    except RecursionError:  # json's parser recurses once per level of nesting
        raise ValueError("not an evidence file: nested too deeply") from None
