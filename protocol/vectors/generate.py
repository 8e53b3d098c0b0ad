"""Regenerate the frame vectors in ``valid/`` and ``invalid/`` (see README.md).

Run from the repository root::

    python protocol/vectors/generate.py

Valid vectors are canonical encodings of fixed example frames; invalid vectors
are hand-made byte strings, each with the error code a conforming decoder must
raise. Output is deterministic: rerunning changes no file unless the frames,
the codec or this script changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import msgpack

from blindrelay.protocol import frames as f
from blindrelay.protocol import limits
from blindrelay.protocol import pow as puzzle
from blindrelay.protocol.codec import encode
from blindrelay.protocol.connection import register_transcript
from blindrelay.protocol.jsonform import to_json
from blindrelay.protocol.skeleton import leading_skeletons, skeleton

HERE = Path(__file__).resolve().parent

K32 = bytes(range(32))
K32B = bytes(range(32, 64))
SIG = bytes(range(64))
MID = bytes.fromhex("00112233445566778899aabbccddeeff")
N16 = bytes(range(16))
T0 = 1_790_000_000_000
POW = f.ProofOfWork(bits=4, opslimit=2, memlimit=16 * 1024 * 1024)


def valid_frames() -> dict[str, f.Frame]:
    spk = f.SignedPreKeyRecord(key_id=7, public=K32B, signature=SIG)
    otk = f.OneTimePreKeyRecord(key_id=1001, public=K32)
    return {
        "hello": f.Hello(version=1, relay_key=K32, challenge=K32B, expires_at=T0 + 30_000, now=T0),
        "register_user": f.Register(id=1, handle="alice", kind="user", identity_key=K32, signature=SIG),
        "register_business": f.Register(id=1, handle="skyways.air", kind="business", identity_key=K32, signature=SIG),
        "hello_with_pow": f.Hello(version=1, relay_key=K32, challenge=K32B, expires_at=T0 + 120_000, now=T0, pow=POW),
        "register_with_pow_and_invite": f.Register(id=1, handle="alice", kind="user", identity_key=K32, signature=SIG, pow_nonce=N16, invite=N16[::-1]),
        "login": f.Login(id=1, handle="alice", signature=SIG),
        "welcome": f.Welcome(re=1, handle="alice", kind="user", queued=3, one_time_prekeys=100, has_signed_prekey=True),
        "rotate_identity": f.RotateIdentity(id=9, new_identity_key=K32B, issued_at=T0, old_signature=SIG, new_signature=SIG[::-1]),
        "ok": f.Ok(re=42),
        "error_bare": f.Error(code=400, re=5),
        "error_push": f.Error(code=100, reason="frame: missing key 'body'"),
        "error_rate_limited": f.Error(code=402, re=6, retry_after=1500),
        "prekeys_upload_full": f.PrekeysUpload(id=2, signed_prekey=spk, one_time=(otk, f.OneTimePreKeyRecord(key_id=1002, public=K32B))),
        "prekeys_upload_one_time_only": f.PrekeysUpload(id=3, one_time=(otk,)),
        "bundle_fetch": f.BundleFetch(id=4, handle="bob"),
        "bundle_with_one_time": f.Bundle(re=4, handle="bob", kind="user", identity_key=K32, signed_prekey=spk, one_time=otk),
        "bundle_without_one_time": f.Bundle(re=4, handle="bob", kind="user", identity_key=K32, signed_prekey=spk),
        "prekeys_low": f.PrekeysLow(remaining=19),
        "send_chat": f.Send(id=5, to="bob", msg_id=MID, intent="chat", body=b"\x01" * 48),
        "send_notification": f.Send(id=6, to="alice", msg_id=MID, intent="notification", body=b"\x02" * 48, category="utility"),
        "send_consent_request": f.Send(id=7, to="alice", msg_id=MID, intent="consent_request", body=b"\x03" * 48, categories=("utility", "marketing")),
        "sent": f.Sent(re=5, msg_id=MID, at=T0 + 1),
        "deliver_chat": f.Deliver(delivery_id=77, sender="alice", sender_kind="user", msg_id=MID, intent="chat", sent_at=T0 + 1, body=b"\x01" * 48),
        "deliver_statement": f.Deliver(delivery_id=78, sender="alice", sender_kind="user", msg_id=MID, intent="statement", sent_at=T0 + 2, body=b"\x04" * 40),
        "ack": f.Ack(delivery_ids=(77, 78)),
        "statement": f.Statement(id=8, statement=b"\x05" * 200),
        "statements_list": f.StatementsList(id=9, after=0),
        "statements": f.Statements(re=9, statements=(b"\x05" * 20, b"\x06" * 20), next=2),
        "profile_put": f.ProfilePut(id=10, profile=b"\x07" * 300),
        "profile_fetch": f.ProfileFetch(id=11, handle="skyways.air"),
        "profile": f.Profile(re=11, handle="skyways.air", identity_key=K32, profile=b"\x07" * 300, badge=b"\x08" * 150),
        "usage_fetch": f.UsageFetch(id=12, month="2026-11"),
        "usage": f.Usage(re=12, month="2026-11", notifications=(f.UsageCount("utility", 1200), f.UsageCount("marketing", 3)), service_replies=40, user_initiated=55),
    }  # fmt: skip


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _send(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"t": 20, "id": 5, "to": "bob", "msg_id": MID, "intent": "chat", "body": b"\x01" * 16}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _hello(**extra: object) -> dict[str, object]:
    return {"t": 1, "version": 1, "relay_key": K32, "challenge": K32B, "expires_at": T0, "now": T0, **extra}


def invalid_vectors() -> dict[str, tuple[bytes, str, str]]:
    """name → (bytes, expected error code name, what is wrong)."""
    good = encode(valid_frames()["send_chat"])
    deep: object = 1
    for _ in range(5):
        deep = [deep]
    return {
        "empty": (b"", "MALFORMED_FRAME", "no bytes at all"),
        "truncated": (good[:-1], "MALFORMED_FRAME", "valid SEND with its last byte cut"),
        "trailing_bytes": (good + b"\x00", "MALFORMED_FRAME", "a second object after the frame"),
        "reserved_byte": (b"\xc1", "MALFORMED_FRAME", "0xc1 is never valid msgpack"),
        "top_level_array": (_pack([20, 5]), "MALFORMED_FRAME", "frame is an array, not a map"),
        "top_level_int": (_pack(20), "MALFORMED_FRAME", "frame is an integer"),
        "int_map_key": (bytes.fromhex("82a17408") + bytes.fromhex("0101"), "MALFORMED_FRAME", "map key 1 is not a string"),
        "duplicate_type_key": (bytes.fromhex("83a17408a2726501a17408"), "MALFORMED_FRAME", "key t appears twice in OK"),
        "duplicate_field_key": (bytes.fromhex("83a17408a2726501a2726502"), "MALFORMED_FRAME", "key re appears twice in OK"),
        "unknown_field": (_pack({"t": 8, "re": 1, "extra": 1}), "MALFORMED_FRAME", "OK with a key the spec does not define"),
        "missing_field": (_pack(_send(body=_DROP)), "MALFORMED_FRAME", "SEND without body"),
        "missing_type": (_pack({"re": 1}), "MALFORMED_FRAME", "no t key"),
        "unknown_type": (_pack({"t": 99, "id": 1}), "UNKNOWN_FRAME_TYPE", "t = 99 is not defined"),
        "type_as_string": (_pack({"t": "8", "re": 1}), "MALFORMED_FRAME", "t is a string"),
        "type_as_bool": (_pack({"t": True, "re": 1}), "MALFORMED_FRAME", "t is a boolean"),
        "str_for_bin": (_pack(_send(msg_id="0123456789abcdef")), "MALFORMED_FRAME", "msg_id sent as str instead of bin"),
        "bin_for_str": (_pack(_send(to=b"bob")), "MALFORMED_FRAME", "to sent as bin instead of str"),
        "bool_for_int": (_pack({"t": 8, "re": True}), "MALFORMED_FRAME", "re is a boolean"),
        "float_for_int": (_pack({"t": 8, "re": 1.0}), "MALFORMED_FRAME", "re is a float"),
        "nil_optional": (_pack(_send(category=None)), "MALFORMED_FRAME", "optional field present as nil"),
        "ext_type": (_pack({"t": 8, "re": msgpack.ExtType(5, b"x")}), "MALFORMED_FRAME", "extension type 5"),
        "timestamp_ext": (bytes.fromhex("82a17408a27265d6ff00000001"), "MALFORMED_FRAME", "timestamp extension (-1) as re"),
        "too_deep": (_pack({"t": 23, "delivery_ids": deep}), "MALFORMED_FRAME", "arrays nested 6 deep"),
        "request_id_zero": (_pack({"t": 11, "id": 0, "handle": "bob"}), "MALFORMED_FRAME", "id 0 is reserved"),
        "request_id_over_u32": (_pack({"t": 11, "id": 2**32, "handle": "bob"}), "MALFORMED_FRAME", "id above 2^32-1"),
        "request_id_negative": (_pack({"t": 11, "id": -1, "handle": "bob"}), "MALFORMED_FRAME", "negative id"),
        "handle_uppercase": (_pack({"t": 11, "id": 1, "handle": "Bob"}), "MALFORMED_FRAME", "upper-case handle"),
        "handle_too_short": (_pack({"t": 11, "id": 1, "handle": "bo"}), "MALFORMED_FRAME", "two-character handle"),
        "handle_too_long": (_pack({"t": 11, "id": 1, "handle": "b" * 33}), "MALFORMED_FRAME", "33-character handle"),
        "handle_homoglyph": (_pack({"t": 11, "id": 1, "handle": "\u0430irline"}), "MALFORMED_FRAME", "Cyrillic a in a handle"),
        "handle_leading_dot": (_pack({"t": 11, "id": 1, "handle": ".bob"}), "MALFORMED_FRAME", "handle starts with a dot"),
        "handle_trailing_dot": (_pack({"t": 11, "id": 1, "handle": "airline."}), "MALFORMED_FRAME", "handle ends with a dot (a lookalike of airline)"),
        "handle_trailing_hyphen": (_pack({"t": 11, "id": 1, "handle": "airline-"}), "MALFORMED_FRAME", "handle ends with a hyphen"),
        "handle_double_punctuation": (_pack({"t": 11, "id": 1, "handle": "air..line"}), "MALFORMED_FRAME", "two punctuation characters in a row"),
        "handle_mixed_double_punctuation": (_pack({"t": 11, "id": 1, "handle": "air_-line"}), "MALFORMED_FRAME", "two different punctuation characters in a row"),
        "invalid_utf8": (bytes.fromhex("83a1740ba26964 01a6 68616e646c65 a3 62ff62".replace(" ", "")), "MALFORMED_FRAME", "handle is not valid UTF-8"),
        "msg_id_short": (_pack(_send(msg_id=MID[:15])), "MALFORMED_FRAME", "15-byte msg_id"),
        "body_empty": (_pack(_send(body=b"")), "MALFORMED_FRAME", "empty body"),
        "body_too_large": (_pack(_send(body=b"\x00" * (limits.MAX_CIPHERTEXT_BYTES + 1))), "FRAME_TOO_LARGE", "body one byte over MAX_CIPHERTEXT_BYTES"),
        "frame_too_large": (_pack(_send(body=b"\x00" * limits.MAX_FRAME_BYTES)), "FRAME_TOO_LARGE", "message over MAX_FRAME_BYTES"),
        "intent_unknown": (_pack(_send(intent="spam")), "MALFORMED_FRAME", "intent not defined"),
        "intent_statement_from_client": (_pack(_send(intent="statement")), "MALFORMED_FRAME", "clients may not send intent statement"),
        "notification_without_category": (_pack(_send(intent="notification")), "MALFORMED_FRAME", "notification needs a category"),
        "chat_with_category": (_pack(_send(category="utility")), "MALFORMED_FRAME", "category only with notification"),
        "category_unknown": (_pack(_send(intent="notification", category="spam")), "MALFORMED_FRAME", "category not defined"),
        "categories_duplicate": (_pack(_send(intent="consent_request", categories=["utility", "utility"])), "MALFORMED_FRAME", "the same category twice"),
        "categories_empty": (_pack(_send(intent="consent_request", categories=[])), "MALFORMED_FRAME", "a consent request for nothing"),
        "ack_empty": (_pack({"t": 23, "delivery_ids": []}), "MALFORMED_FRAME", "ACK with no ids"),
        "ack_too_many": (_pack({"t": 23, "delivery_ids": list(range(1, limits.MAX_ACK_IDS + 2))}), "FRAME_TOO_LARGE", "ACK over MAX_ACK_IDS"),
        "prekeys_upload_empty": (_pack({"t": 10, "id": 1, "one_time": []}), "MALFORMED_FRAME", "upload carrying no key"),
        "prekeys_duplicate_ids": (_pack({"t": 10, "id": 1, "one_time": [{"key_id": 1, "public": K32}, {"key_id": 1, "public": K32B}]}), "MALFORMED_FRAME", "two one-time prekeys with one id"),
        "record_unknown_key": (_pack({"t": 10, "id": 1, "one_time": [{"key_id": 1, "public": K32, "private": K32}]}), "MALFORMED_FRAME", "a private key field inside a record"),
        "record_as_array": (_pack({"t": 10, "id": 1, "signed_prekey": [7, K32, SIG]}), "MALFORMED_FRAME", "record sent as an array"),
        "public_key_short": (_pack({"t": 10, "id": 1, "one_time": [{"key_id": 1, "public": K32[:31]}]}), "MALFORMED_FRAME", "31-byte public key"),
        "reason_on_refusal": (_pack({"t": 9, "code": 400, "reason": "blocked"}), "MALFORMED_FRAME", "reason only allowed with 1xx codes"),
        "month_invalid": (_pack({"t": 43, "id": 1, "month": "2026-13"}), "MALFORMED_FRAME", "month 13"),
        "pow_over_the_cost_bound": (_pack(_hello(pow={"bits": 7, "opslimit": 2, "memlimit": 16 * 1024 * 1024})), "MALFORMED_FRAME", "proof of work expected to take over POW_MAX_EXPECTED_SOLVE_MS"),
        "pow_memlimit_not_kib": (_pack(_hello(pow={"bits": 1, "opslimit": 1, "memlimit": 1024 * 1024 + 1})), "MALFORMED_FRAME", "memlimit not a multiple of 1024"),
        "pow_no_bits": (_pack(_hello(pow={"bits": 0, "opslimit": 1, "memlimit": 1024 * 1024})), "MALFORMED_FRAME", "difficulty 0: omit pow instead"),
        "pow_nonce_short": (_pack({"t": 2, "id": 1, "handle": "alice", "kind": "user", "identity_key": K32, "signature": SIG, "pow_nonce": N16[:15]}), "MALFORMED_FRAME", "15-byte proof-of-work nonce"),
        "invite_long": (_pack({"t": 2, "id": 1, "handle": "alice", "kind": "user", "identity_key": K32, "signature": SIG, "invite": N16 + b"\x00"}), "MALFORMED_FRAME", "17-byte invite"),
        "kind_unknown": (_pack({"t": 2, "id": 1, "handle": "alice", "kind": "admin", "identity_key": K32, "signature": SIG}), "MALFORMED_FRAME", "account kind not defined"),
    }  # fmt: skip


SKELETON_HANDLES = (
    "airline", "air1ine", "airiine", "ai.rline", "air-line", "airline.com", "airline-support",
    "air.france-help", "g00gle", "rnicrosoft", "vvalmart", "clisney", "wvw", "vvvvv", "skyways.air",
)  # fmt: skip


def skeleton_vectors() -> list[dict[str, object]]:
    """SPEC §3.2: each handle's skeleton and the skeletons of its leading label runs."""
    return [
        {"handle": h, "skeleton": skeleton(h), "leading": list(leading_skeletons(h))}
        for h in SKELETON_HANDLES
    ]


def pow_vectors() -> list[dict[str, object]]:
    """SPEC §4.6.3: the Argon2id digest of a registration's proof of work, and whether
    the nonce solves it (a solution found by counting from 0, and the nonce before it)."""
    out: list[dict[str, object]] = []
    cost = f.ProofOfWork(bits=3, opslimit=1, memlimit=1024 * 1024)
    transcript = register_transcript(K32, K32B, "alice", "user", K32)
    solved = puzzle.solve(transcript, K32B, cost.bits, cost.opslimit, cost.memlimit)
    before = (int.from_bytes(solved, "big") - 1).to_bytes(16, "big")
    for nonce in (solved, before) if solved != bytes(16) else (solved,):
        digest = puzzle.proof_digest(transcript, K32B, nonce, cost.opslimit, cost.memlimit)
        out.append(
            {
                "relay_key": K32.hex(), "challenge": K32B.hex(), "handle": "alice", "kind": "user",
                "identity_key": K32.hex(), "bits": cost.bits, "opslimit": cost.opslimit,
                "memlimit": cost.memlimit, "registration_transcript": transcript.hex(),
                "pow_nonce": nonce.hex(), "digest": digest.hex(),
                "leading_zero_bits": puzzle.leading_zero_bits(digest),
                "solves": puzzle.verify(transcript, K32B, nonce, cost.bits, cost.opslimit, cost.memlimit),
            }
        )  # fmt: skip
    return out


def main() -> None:
    for folder in ("valid", "invalid"):
        shutil.rmtree(HERE / folder, ignore_errors=True)
        (HERE / folder).mkdir()
    for name, frame in valid_frames().items():
        record = {"hex": encode(frame).hex(), "frame": to_json(frame)}
        _write(HERE / "valid" / f"{name}.json", record)
    for name, (data, code, description) in invalid_vectors().items():
        record = {"hex": data.hex(), "error": code, "description": description}
        _write(HERE / "invalid" / f"{name}.json", record)
    _write(HERE / "skeletons.json", {"skeletons": skeleton_vectors()})
    _write(HERE / "pow.json", {"pow": pow_vectors()})


def _write(path: Path, record: Mapping[str, object]) -> None:
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
