"""Regenerate the transparency-log known-answer vectors (SPEC §15).

Run from the repository root:  .venv/bin/python protocol/vectors/transparency/generate.py
(``--check`` compares instead of writing). Every input is fixed: keys come from
constant seeds, salts and nonces from constant bytes, times from ``T0``; the
Ed25519 signatures are deterministic. A change to any output is a wire change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from blindrelay.protocol.business import issue_badge
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.signed import make_statement
from blindrelay.protocol.transparency import entries as e
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.treehead import sign_tree_head

HERE = Path(__file__).resolve().parent
NAME = "transparency.json"

T0 = 1_790_000_000_000
RELAY = IdentityKeyPair(bytes.fromhex("c0" * 32))
OPERATOR = IdentityKeyPair(bytes.fromhex("d0" * 32))
BUSINESS = IdentityKeyPair(bytes.fromhex("e0" * 32))
BUSINESS_ROTATED = IdentityKeyPair(bytes.fromhex("e1" * 32))
USER = IdentityKeyPair(bytes.fromhex("a0" * 32))
SALTS = [bytes([0x50 + i]) * e.SALT_LEN for i in range(3)]


def fixed(byte: int) -> Any:
    return lambda n: bytes([byte]) * n


def statement() -> bytes:
    """A grant by alice to skyways.air: its commitment is what the log holds."""
    return make_statement(
        "grant", signer="alice", signer_key=USER.public, target="skyways.air",
        relay_key=RELAY.public, now_ms=T0 + 3, rng=fixed(0x11), categories=("utility",),
    ).sign(USER.sign)


def bill_items() -> list[e.BillItem]:
    recipients = ["alice", "bob", "alice"]
    return [
        e.BillItem(
            v=1, msg_id=bytes([0x70 + i]) * 16, category="utility", at=T0 + 100 + i,
            recipient=e.recipient_commitment(who, SALTS[i]),
        )
        for i, who in enumerate(recipients)
    ]


def log_entries() -> dict[str, e.LogEntry]:
    badge = issue_badge(
        OPERATOR.sign, handle="skyways.air", identity_key=BUSINESS.public,
        display_name="Skyways", serial=42, now_ms=T0 + 1, validity_ms=86_400_000,
    )
    items = bill_items()
    return {
        "business_registered": e.KeyBinding(
            v=1, handle="skyways.air", kind="business", identity_key=BUSINESS.public, at=T0
        ),
        "badge_issued": e.BadgeIssued(v=1, handle="skyways.air", serial=42, badge=badge, at=T0 + 1),
        "user_opted_in": e.KeyBinding(
            v=1, handle="alice", kind="user", identity_key=USER.public, at=T0 + 2
        ),
        "statement": e.StatementLogged(
            v=1, commitment=e.statement_commitment(statement()), at=T0 + 3
        ),
        "business_rotated": e.KeyBinding(
            v=1, handle="skyways.air", kind="business", identity_key=BUSINESS_ROTATED.public,
            at=T0 + 4, previous_key=BUSINESS.public,
        ),
        "badge_revoked": e.BadgeRevoked(v=1, handle="skyways.air", serial=42, at=T0 + 5),
        "bill": e.BillLogged(
            v=1, handle="skyways.air", month="2026-09", count=len(items),
            root=e.bill_root(items), at=T0 + 6,
        ),
    }


def build() -> dict[str, Any]:
    named = log_entries()
    data = [entry.to_bytes() for entry in named.values()]
    leaves = [merkle.leaf_hash(d) for d in data]
    frontier = merkle.Frontier()
    stored: dict[merkle.Node, bytes] = {}
    roots = []
    for leaf in leaves:
        stored.update(frontier.append(leaf))
        roots.append(frontier.root().hex())

    def lookup(nodes: Any) -> dict[merkle.Node, bytes]:
        return {node: stored[node] for node in nodes}

    size = len(leaves)
    items = bill_items()
    return {
        "description": "SPEC §15: entries, leaf hashes, roots, proofs, a signed tree head, a bill",
        "relay_public_key": RELAY.public.hex(),
        "operator_public_key": OPERATOR.public.hex(),
        "entries": [
            {"name": name, "hex": d.hex(), "leaf_hash": leaf.hex()}
            for name, d, leaf in zip(named, data, leaves, strict=True)
        ],
        "roots_by_size": [merkle.EMPTY_ROOT.hex(), *roots],
        "inclusion_proofs": [
            {"index": i, "size": size,
             "proof": [h.hex() for h in merkle.inclusion_proof(i, size, lookup)]}
            for i in range(size)
        ],
        "consistency_proofs": [
            {"first": m, "second": size,
             "proof": [h.hex() for h in merkle.consistency_proof(m, size, lookup)]}
            for m in range(1, size + 1)
        ],
        "tree_head": {
            "size": size, "root": roots[-1], "timestamp": T0 + 10_000,
            "signed": sign_tree_head(RELAY.sign, size, frontier.root(), T0 + 10_000).hex(),
        },
        "statement": {
            "signed": statement().hex(),
            "commitment": e.statement_commitment(statement()).hex(),
        },
        "bill": {
            "items": [
                {"hex": item.to_bytes().hex(), "salt": salt.hex(), "recipient_handle": who}
                for item, salt, who in zip(items, SALTS, ["alice", "bob", "alice"], strict=True)
            ],
            "root": e.bill_root(items).hex(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = json.dumps(build(), indent=2) + "\n"
    path = HERE / NAME
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"stale vectors: {NAME}", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
