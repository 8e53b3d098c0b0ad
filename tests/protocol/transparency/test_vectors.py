"""The transparency vectors (protocol/vectors/transparency) hold, checked independently.

The generator is rerun and must reproduce the file; the file is then checked
with the standard library alone where that is possible (leaf hashes, roots by
hand-folded SHA-256), and every proof in it verifies.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.signed import verify_statement
from blindrelay.protocol.transparency import entries as e
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.treehead import open_tree_head

VECTORS = Path(__file__).resolve().parents[3] / "protocol" / "vectors" / "transparency"
FROZEN = json.loads((VECTORS / "transparency.json").read_text())


def test_the_generator_reproduces_the_frozen_file() -> None:
    spec = importlib.util.spec_from_file_location("transparency_vectors", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(json.dumps(module.build())) == FROZEN


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_leaf_hashes_and_roots_by_hand() -> None:
    leaves = [bytes.fromhex(x["leaf_hash"]) for x in FROZEN["entries"]]
    for entry, leaf in zip(FROZEN["entries"], leaves, strict=True):
        data = bytes.fromhex(entry["hex"])
        assert sha(b"\x00" + data) == leaf
        assert e.decode_entry(data).to_bytes() == data
    n = lambda a, b: sha(b"\x01" + a + b)  # noqa: E731
    a, b, c, d, f, g, h = leaves  # seven entries: ((ab)(cd))((fg)h)
    assert FROZEN["roots_by_size"][7] == n(n(n(a, b), n(c, d)), n(n(f, g), h)).hex()
    assert FROZEN["roots_by_size"][3] == n(n(a, b), c).hex()
    assert FROZEN["roots_by_size"][0] == sha(b"").hex()


def test_every_proof_in_the_file_verifies() -> None:
    roots = [bytes.fromhex(r) for r in FROZEN["roots_by_size"]]
    for p in FROZEN["inclusion_proofs"]:
        leaf = bytes.fromhex(FROZEN["entries"][p["index"]]["leaf_hash"])
        proof = [bytes.fromhex(x) for x in p["proof"]]
        merkle.verify_inclusion(leaf, p["index"], p["size"], proof, roots[p["size"]])
    for p in FROZEN["consistency_proofs"]:
        proof = [bytes.fromhex(x) for x in p["proof"]]
        merkle.verify_consistency(p["first"], p["second"], roots[p["first"]], roots[p["second"]], proof)


def test_the_tree_head_statement_and_bill_hold() -> None:
    relay_key = bytes.fromhex(FROZEN["relay_public_key"])
    th = FROZEN["tree_head"]
    opened = open_tree_head(bytes.fromhex(th["signed"]), relay_key)
    assert (opened.size, opened.root.hex(), opened.timestamp) == (th["size"], th["root"], th["timestamp"])
    signed = bytes.fromhex(FROZEN["statement"]["signed"])
    assert sha(signed).hex() == FROZEN["statement"]["commitment"]
    alice = IdentityKeyPair(bytes.fromhex("a0" * 32)).public
    assert verify_statement(signed, expected_key=alice, relay_key=relay_key).target == "skyways.air"
    logged = [e.decode_entry(bytes.fromhex(x["hex"])) for x in FROZEN["entries"]]
    assert any(isinstance(x, e.StatementLogged) and x.commitment == sha(signed) for x in logged)
    items = [e.decode_bill_item(bytes.fromhex(x["hex"])) for x in FROZEN["bill"]["items"]]
    for item, x in zip(items, FROZEN["bill"]["items"], strict=True):
        salt = bytes.fromhex(x["salt"])
        assert item.recipient == sha(e.RECIPIENT_CONTEXT + b"\x00" + salt + x["recipient_handle"].encode())
    assert merkle.root_of([sha(b"\x00" + i.to_bytes()) for i in items]).hex() == FROZEN["bill"]["root"]
    bill = next(x for x in logged if isinstance(x, e.BillLogged))
    assert bill.root.hex() == FROZEN["bill"]["root"] and bill.count == len(items)
