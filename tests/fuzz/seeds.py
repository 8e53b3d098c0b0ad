"""Write the seed corpora of tests/fuzz/corpus/ from the vectors and the encoders.

Why a script: a reviewer can see where every seed came from and make them again
(``.venv/bin/python -m tests.fuzz.seeds``). Seeds are named ``seed-*``; files named
``crash-*`` are reproducers of findings and are never written here.
Deterministic: the same files every run.
"""

from __future__ import annotations

import dataclasses
import json

import msgpack

from blindrelay.protocol import codec, content
from blindrelay.protocol import frames as f
from blindrelay.protocol.business import BusinessProfile, OpeningHours, issue_badge
from blindrelay.protocol.connection import ANSWERS
from blindrelay.protocol.crypto import session
from blindrelay.protocol.signed import make_statement
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.evidence import ConsentEvidence, evidence_to_json
from blindrelay.protocol.transparency.treehead import TreeHead

from .targets import (
    ALICE,
    ALICE_PUBLIC,
    CORPUS,
    OPERATOR,
    RELAY_PUBLIC,
    SEP,
    T0,
    VECTORS,
    _client,
    _register_frame,
    _sessions,
    counter_rng,
    sign,
)


def _vector(kind: str, name: str) -> bytes:
    return bytes.fromhex(json.loads((VECTORS / kind / f"{name}.json").read_text())["hex"])


CODEC_VALID = (
    "ack", "bill", "bundle_with_log_proof", "deliver_chat", "deliver_consent_request",
    "deliver_notification", "error_rate_limited", "hello_with_pow", "log_consistency",
    "log_entries", "log_inclusion", "login", "prekeys_upload_full", "profile_put",
    "register_with_pow_and_invite", "rotate_identity", "send_chat", "send_consent_request",
    "send_notification", "sent", "statement", "statements", "usage", "welcome",
)  # fmt: skip
CODEC_INVALID = (
    "duplicate_field_key", "ext_type", "id_with_too_deep", "too_deep", "trailing_bytes",
    "bool_for_int", "nil_optional", "invalid_utf8", "array_over_max_items", "unknown_field",
)  # fmt: skip
FAST = (
    "ack", "deliver_chat", "deliver_consent_request", "deliver_notification", "send_chat",
    "send_consent_request", "send_notification", "sent",
)  # fmt: skip


def seeds() -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    out["codec"] = {name: _vector("valid", name) for name in CODEC_VALID}
    out["codec"] |= {"invalid-" + name: _vector("invalid", name) for name in CODEC_INVALID}
    out["fastcodec"] = {name: _vector("valid", name) for name in FAST}
    register = codec.encode(_register_frame())
    chat, ack = _vector("valid", "send_chat"), _vector("valid", "ack")
    out["relay"] = {
        "register": b"\x00" + register,
        "register-sealed": b"\x02" + register + SEP + b"\xc1" + bytes(40),
        "send-ack": b"\x01" + chat + SEP + ack + SEP + _vector("valid", "log_head_fetch"),
        "send-ack-sealed": b"\x03" + chat + SEP + ack,
        "errors": b"\x01" + SEP.join([_vector("invalid", "truncated")] * 18),
        "statement": b"\x01" + _vector("valid", "statement") + SEP + _vector("valid", "hello"),
    }
    out["client"] = _client_seeds()
    out["noise"] = {
        "message1": b"\x00" + bytes(range(32)),
        "message2": b"\x01" + bytes(192),
        "relay-honest": b"\x02" + b"\x07" * 32 + bytes(32) + b"\x00",
        "relay-static": b"\x02" + b"\x07" * 64 + b"\x00",
        "transport": b"\x03" + SEP.join([b"\x00hello", b"\x00again", b"\x01", b"\x00more"]),
        "transport-tamper": b"\x03" + SEP.join([b"\x00one", b"\x02two", b"\x00three"]),
        "pattern-xx": b"\x04\x03" + bytes(32) + SEP + bytes(96),
        "sealed-frames": b"\x05" + chat + SEP + ack,
    }
    out["content"] = _content_seeds()
    alice, _ = _sessions()
    _, envelope = session.encrypt(alice, b"raw", counter_rng())
    out["envelope"] = {
        "honest": SEP.join([b"\x00hello", b"\x00again", b"\x00" + b"x" * 300]),
        "tampered-header": SEP.join([b"\x00one", b"\x02\x05\x09", b"\x00three"]),
        "replay": SEP.join([b"\x00one", b"\x00two", b"\x03\x00", b"\x03\x01"]),
        "raw": b"\x01" + envelope,
        "raw-skipping": b"\x01" + envelope[:34] + b"\x00\x00\x00\x05" + envelope[38:],
    }
    out["signed"] = _signed_seeds()
    out["transparency"] = _transparency_seeds()
    return out


def _client_seeds() -> dict[str, bytes]:
    relay_hello = codec.encode(
        f.Hello(version=2, relay_key=RELAY_PUBLIC, challenge=bytes(32), expires_at=T0 + 1, now=T0)
    )
    welcome = codec.encode(
        f.Welcome(
            re=1, handle="alice", kind="user", queued=0, one_time_prekeys=0,
            has_signed_prekey=False,
        )
    )  # fmt: skip
    answers = []
    for request_id, asked in sorted(_client(2).pending.items()):
        for path in sorted((VECTORS / "valid").glob("*.json")):
            frame = codec.decode(bytes.fromhex(json.loads(path.read_text())["hex"]))
            if frame.TYPE is ANSWERS[asked]:
                answers.append(codec.encode(dataclasses.replace(frame, re=request_id)))  # type: ignore[call-arg]
                break
    deliver = _vector("valid", "deliver_chat")
    pending = _client(3).pending
    send_id = next(rid for rid, asked in pending.items() if asked is f.FrameType.SEND)
    sent = codec.encode(f.Sent(re=send_id, msg_id=bytes(16), at=T0))
    return {
        "sent-fast": b"\x03" + sent + SEP + sent + SEP + deliver,
        "hello": b"\x00" + relay_hello,
        "welcome": b"\x01" + welcome + SEP + _vector("valid", "error_push"),
        "answers": b"\x02" + SEP.join(answers[:8]),
        "answers-2": b"\x02" + SEP.join(answers[8:]),
        "deliver": b"\x03" + deliver + SEP + deliver + SEP + _vector("valid", "prekeys_low"),
        "error": b"\x02" + codec.encode(f.Error(code=402, re=2, retry_after=5)),
    }


def _content_seeds() -> dict[str, bytes]:
    msg_id = bytes(range(16))
    notification = content.Labels("notification", "utility")
    consent = content.Labels("consent_request", None, ("utility", "marketing"))
    made = {
        "text": content.Content(msg_id, content.Text("hello")),
        "bytes-sth": content.Content(msg_id, content.Data(b"\x00\x01"), sth=b"\x82" * 40),
        "receipt": content.Content(
            msg_id, content.Receipt(content.ReceiptType.READ, (bytes(16), b"\x01" * 16))
        ),
        "notification": content.Content(msg_id, content.Text("flight"), labels=notification),
        "consent": content.Content(msg_id, content.Text("may we?"), labels=consent),
    }
    out = {name: b"\x00" + content.encode_content(c) for name, c in made.items()}
    v1 = {"v": 1, "id": msg_id, "kind": "text", "text": "old"}
    out["v1"] = b"\x01" + msgpack.packb(v1, use_bin_type=True)
    return out


def _signed_seeds() -> dict[str, bytes]:
    statement = make_statement(
        "grant", signer="alice", signer_key=ALICE_PUBLIC, target="shop",
        relay_key=RELAY_PUBLIC, now_ms=T0, rng=counter_rng(), categories=("utility",),
    )  # fmt: skip
    block = make_statement(
        "block", signer="alice", signer_key=ALICE_PUBLIC, target="shop",
        relay_key=RELAY_PUBLIC, now_ms=T0, rng=counter_rng(),
    )  # fmt: skip
    badge = issue_badge(
        sign(OPERATOR), handle="shop", identity_key=ALICE_PUBLIC, display_name="Shop",
        serial=1, now_ms=T0 - 1, validity_ms=10_000,
    )  # fmt: skip
    profile = BusinessProfile(
        v=1, handle="shop", display_name="Shop", description="", timezone="Europe/Paris",
        hours=(OpeningHours(day=0, open=540, close=1080),), exceptions=(), issued_at=T0,
    )  # fmt: skip
    return {
        "statement": b"\x00" + statement.sign(sign(ALICE)),
        "statement-body": b"\x01" + codec.encode_object(statement),
        "block-body": b"\x01" + codec.encode_object(block),
        "badge": b"\x02" + badge,
        "badge-body": b"\x03" + msgpack.unpackb(badge)["body"],
        "profile-body": b"\x04" + codec.encode_object(profile),
        "outer": b"\x05" + badge,
    }


def _transparency_seeds() -> dict[str, bytes]:
    vectors = json.loads((VECTORS / "transparency" / "transparency.json").read_text())
    out = {
        f"entry-{e['name']}": b"\x00" + bytes.fromhex(e["hex"]) for e in vectors["entries"][:6]
    }
    out["bill-item"] = b"\x01" + bytes.fromhex(vectors["bill"]["items"][0]["hex"])
    head = bytes.fromhex(vectors["tree_head"]["signed"])
    out["tree-head"] = b"\x02" + head
    body = msgpack.unpackb(head)["body"]
    out["tree-heads"] = b"\x03" + body + SEP + body
    out["inclusion"] = b"\x04" + bytes([12, 5, 5]) + b"ab"
    out["inclusion-mutated"] = b"\x04" + bytes([12, 5, 5]) + b"ab" + b"\x00\x03"
    out["consistency"] = b"\x05" + bytes([20, 6, 0]) + b"ab"
    out["consistency-fork"] = b"\x05" + bytes([20, 6, 1]) + b"ab" + b"\x03\x00"
    statement = bytes.fromhex(vectors["statement"]["signed"])
    evidence = ConsentEvidence(statement, bytes(40), 0, (bytes(32),), head)
    out["evidence"] = b"\x06" + evidence_to_json(evidence).encode()
    entries = [bytes.fromhex(e["hex"]) for e in vectors["entries"]]
    root = merkle.root_of([merkle.leaf_hash(entry) for entry in entries])
    audited = codec.encode_object(TreeHead(v=1, size=len(entries), root=root, timestamp=T0))
    out["audit"] = b"\x07" + SEP.join([audited, *entries])
    return out


def write() -> int:
    written = 0
    for target, files in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for name, data in files.items():
            (folder / f"seed-{name}").write_bytes(data)
            written += 1
    return written


if __name__ == "__main__":
    print(f"{write()} seed files written under {CORPUS}")
