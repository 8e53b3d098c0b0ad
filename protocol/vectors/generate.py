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
from nacl.signing import SigningKey

from blindrelay.protocol import channel, limits
from blindrelay.protocol import frames as f
from blindrelay.protocol import pow as puzzle
from blindrelay.protocol.codec import encode
from blindrelay.protocol.jsonform import to_json
from blindrelay.protocol.skeleton import leading_skeletons, skeleton
from blindrelay.protocol.transcripts import login_transcript, register_transcript

HERE = Path(__file__).resolve().parent

K32 = bytes(range(32))
K32B = bytes(range(32, 64))
K64 = bytes(range(64, 128))
SIG = bytes(range(64))
N16 = bytes(range(16))
T0 = 1_790_000_000_000
MID = f.message_id(T0, bytes.fromhex("66778899aabbccddeeff"))
"""A message id as SPEC §6.1.1 recommends: T0 in ms, then 80 random bits."""
POW = f.ProofOfWork(bits=4, opslimit=2, memlimit=16 * 1024 * 1024)


def valid_frames() -> dict[str, f.Frame]:
    spk = f.SignedPreKeyRecord(key_id=7, public=K32B, signature=SIG)
    otk = f.OneTimePreKeyRecord(key_id=1001, public=K32)
    return {
        "hello": f.Hello(version=2, relay_key=K32, challenge=K32B, expires_at=T0 + 30_000, now=T0),
        "register_user": f.Register(id=1, handle="alice", kind="user", identity_key=K32, signature=SIG),
        "register_business": f.Register(id=1, handle="skyways.air", kind="business", identity_key=K32, signature=SIG),
        "hello_with_pow": f.Hello(version=2, relay_key=K32, challenge=K32B, expires_at=T0 + 120_000, now=T0, pow=POW),
        "register_with_pow_and_invite": f.Register(id=1, handle="alice", kind="user", identity_key=K32, signature=SIG, pow_nonce=N16, invite=N16[::-1]),
        "login": f.Login(id=1, handle="alice", signature=SIG),
        "welcome": f.Welcome(re=1, handle="alice", kind="user", queued=3, one_time_prekeys=100, has_signed_prekey=True),
        "rotate_identity": f.RotateIdentity(id=9, new_identity_key=K32B, issued_at=T0, old_signature=SIG, new_signature=SIG[::-1]),
        "rotate_identity_latest_time": f.RotateIdentity(id=9, new_identity_key=K32B, issued_at=2**53 - 1, old_signature=SIG, new_signature=SIG[::-1]),
        "ok": f.Ok(re=42),
        "error_bare": f.Error(code=400, re=5),
        "error_push": f.Error(code=100, reason="frame: missing key 'body'"),
        "error_rate_limited": f.Error(code=402, re=6, retry_after=1500),
        "error_store_unavailable": f.Error(code=902, re=6, retry_after=250),
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
        "deliver_notification": f.Deliver(delivery_id=79, sender="skyways.air", sender_kind="business", msg_id=MID, intent="notification", sent_at=T0 + 3, body=b"\x02" * 48, category="utility"),
        "deliver_consent_request": f.Deliver(delivery_id=80, sender="skyways.air", sender_kind="business", msg_id=MID, intent="consent_request", sent_at=T0 + 4, body=b"\x03" * 48, categories=("utility", "marketing")),
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
        "bill_fetch": f.BillFetch(id=18, month="2026-11", start=0),
        "bill": f.Bill(re=18, month="2026-11", entry=b"blindrelay/v1/log/bill\x00" + b"\x0d" * 80, index=7, proof=(K32, K32B), sth=b"\x0a" * 160, salt=b"\x0e" * 16, start=0, items=(b"blindrelay/v1/bill/item\x00" + b"\x0f" * 90, b"blindrelay/v1/bill/item\x00" + b"\x10" * 90)),
        "bundle_with_log_proof": f.Bundle(re=4, handle="skyways.air", kind="business", identity_key=K32, signed_prekey=spk, log=f.LogProof(entry=b"blindrelay/v1/log/key\x00" + b"\x09" * 60, index=5, proof=(K32, K32B, bytes(32)), sth=b"\x0a" * 160)),
        "log_head_fetch": f.LogHeadFetch(id=13),
        "log_head": f.LogHead(re=13, sth=b"\x0a" * 160),
        "log_head_none": f.LogHead(re=13),
        "log_consistency_fetch": f.LogConsistencyFetch(id=14, first=5, second=12),
        "log_consistency": f.LogConsistency(re=14, proof=(K32, K32B)),
        "log_inclusion_fetch": f.LogInclusionFetch(id=15, entry=b"blindrelay/v1/log/key\x00" + b"\x09" * 60, size=12),
        "log_inclusion": f.LogInclusion(re=15, index=5, proof=(K32B, K32, bytes(32), bytes(range(1, 33)))),
        "log_entries_fetch": f.LogEntriesFetch(id=16, start=0, count=30),
        "log_entries": f.LogEntries(re=16, start=0, entries=(b"blindrelay/v1/log/statement\x00" + b"\x0b" * 40, b"blindrelay/v1/log/key\x00" + b"\x0c" * 60)),
        "discoverable": f.Discoverable(id=17),
    }  # fmt: skip


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _send(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"t": 20, "id": 5, "to": "bob", "msg_id": MID, "intent": "chat", "body": b"\x01" * 16}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _hello(**extra: object) -> dict[str, object]:
    return {"t": 1, "version": 2, "relay_key": K32, "challenge": K32B, "expires_at": T0, "now": T0, **extra}


def invalid_vectors() -> dict[str, tuple[bytes, str, int | None, str]]:
    """name → (bytes, expected error code name, expected ``re`` or None, what is wrong).

    The ``re`` follows SPEC §2.2.5 and is written out by hand here, not computed
    by the codec, so that the vectors check the codec rather than echo it.
    """
    good = encode(valid_frames()["send_chat"])
    deep: object = 1
    for _ in range(5):
        deep = [deep]
    return {
        "empty": (b"", "MALFORMED_FRAME", None, "no bytes at all"),
        "truncated": (good[:-1], "MALFORMED_FRAME", None, "valid SEND with its last byte cut"),
        "trailing_bytes": (good + b"\x00", "MALFORMED_FRAME", 5, "a second object after the frame"),
        "reserved_byte": (b"\xc1", "MALFORMED_FRAME", None, "0xc1 is never valid msgpack"),
        "top_level_array": (_pack([20, 5]), "MALFORMED_FRAME", None, "frame is an array, not a map"),
        "top_level_int": (_pack(20), "MALFORMED_FRAME", None, "frame is an integer"),
        "int_map_key": (bytes.fromhex("82a17408") + bytes.fromhex("0101"), "MALFORMED_FRAME", None, "map key 1 is not a string"),
        "bin_map_key": (bytes.fromhex("83a17408a2726501c4017801"), "MALFORMED_FRAME", None, "OK with a bin key: a key that is not a string, not an unknown one"),
        "bin_map_key_with_unknown_type": (bytes.fromhex("82a174cc63c4017801"), "MALFORMED_FRAME", None, "a bin key beside a t that is no frame type: rule 2 is the msgpack layer's, found before t (102 until 2026-12-07)"),
        "duplicate_type_key": (bytes.fromhex("83a17408a2726501a17408"), "MALFORMED_FRAME", None, "key t appears twice in OK"),
        "duplicate_field_key": (bytes.fromhex("83a17408a2726501a2726502"), "MALFORMED_FRAME", None, "key re appears twice in OK"),
        "unknown_field": (_pack({"t": 8, "re": 1, "extra": 1}), "MALFORMED_FRAME", None, "OK with a key the spec does not define"),
        "missing_field": (_pack(_send(body=_DROP)), "MALFORMED_FRAME", 5, "SEND without body"),
        "missing_type": (_pack({"re": 1}), "MALFORMED_FRAME", None, "no t key"),
        "unknown_type": (_pack({"t": 99, "id": 1}), "UNKNOWN_FRAME_TYPE", 1, "t = 99 is not defined"),
        "type_as_string": (_pack({"t": "8", "re": 1}), "MALFORMED_FRAME", None, "t is a string"),
        "type_as_bool": (_pack({"t": True, "re": 1}), "MALFORMED_FRAME", None, "t is a boolean"),
        "str_for_bin": (_pack(_send(msg_id="0123456789abcdef")), "MALFORMED_FRAME", 5, "msg_id sent as str instead of bin"),
        "bin_for_str": (_pack(_send(to=b"bob")), "MALFORMED_FRAME", 5, "to sent as bin instead of str"),
        "bool_for_int": (_pack({"t": 8, "re": True}), "MALFORMED_FRAME", None, "re is a boolean"),
        "float_for_int": (_pack({"t": 8, "re": 1.0}), "MALFORMED_FRAME", None, "re is a float"),
        "nil_optional": (_pack(_send(category=None)), "MALFORMED_FRAME", 5, "optional field present as nil"),
        "ext_type": (_pack({"t": 8, "re": msgpack.ExtType(5, b"x")}), "MALFORMED_FRAME", None, "extension type 5"),
        "timestamp_ext": (bytes.fromhex("82a17408a27265d6ff00000001"), "MALFORMED_FRAME", None, "timestamp extension (-1) as re"),
        "timestamp_ext_with_unknown_type": (bytes.fromhex("83a17463a2696402a178d6ff00000001"), "MALFORMED_FRAME", 2, "a timestamp extension under an unknown t: the msgpack layer comes before t"),
        "too_deep_with_unknown_type": (_pack({"t": 99, "x": deep}), "MALFORMED_FRAME", None, "nesting too deep under an unknown t: the msgpack layer comes before t"),
        "too_deep": (_pack({"t": 23, "delivery_ids": deep}), "MALFORMED_FRAME", None, "arrays nested 6 deep"),
        "request_id_zero": (_pack({"t": 11, "id": 0, "handle": "bob"}), "MALFORMED_FRAME", None, "id 0 is reserved"),
        "request_id_over_u32": (_pack({"t": 11, "id": 2**32, "handle": "bob"}), "MALFORMED_FRAME", None, "id above 2^32-1"),
        "request_id_negative": (_pack({"t": 11, "id": -1, "handle": "bob"}), "MALFORMED_FRAME", None, "negative id"),
        "handle_uppercase": (_pack({"t": 11, "id": 1, "handle": "Bob"}), "MALFORMED_FRAME", 1, "upper-case handle"),
        "handle_too_short": (_pack({"t": 11, "id": 1, "handle": "bo"}), "MALFORMED_FRAME", 1, "two-character handle"),
        "handle_too_long": (_pack({"t": 11, "id": 1, "handle": "b" * 33}), "FRAME_TOO_LARGE", 1, "33-character handle: longer than its maximum"),
        "handle_homoglyph": (_pack({"t": 11, "id": 1, "handle": "\u0430irline"}), "MALFORMED_FRAME", 1, "Cyrillic a in a handle"),
        "handle_leading_dot": (_pack({"t": 11, "id": 1, "handle": ".bob"}), "MALFORMED_FRAME", 1, "handle starts with a dot"),
        "invalid_utf8": (bytes.fromhex("83a1740ba26964 01a6 68616e646c65 a3 62ff62".replace(" ", "")), "MALFORMED_FRAME", 1, "handle is not valid UTF-8"),
        "msg_id_short": (_pack(_send(msg_id=MID[:15])), "MALFORMED_FRAME", 5, "15-byte msg_id"),
        "body_empty": (_pack(_send(body=b"")), "MALFORMED_FRAME", 5, "empty body"),
        "body_too_large": (_pack(_send(body=b"\x00" * (limits.MAX_CIPHERTEXT_BYTES + 1))), "FRAME_TOO_LARGE", 5, "body one byte over MAX_CIPHERTEXT_BYTES"),
        "frame_too_large": (_pack(_send(body=b"\x00" * limits.MAX_FRAME_BYTES)), "FRAME_TOO_LARGE", 5, "message over MAX_FRAME_BYTES"),
        "intent_unknown": (_pack(_send(intent="spam")), "MALFORMED_FRAME", 5, "intent not defined"),
        "intent_statement_from_client": (_pack(_send(intent="statement")), "MALFORMED_FRAME", 5, "clients may not send intent statement"),
        "notification_without_category": (_pack(_send(intent="notification")), "MALFORMED_FRAME", 5, "notification needs a category"),
        "chat_with_category": (_pack(_send(category="utility")), "MALFORMED_FRAME", 5, "category only with notification"),
        "category_unknown": (_pack(_send(intent="notification", category="spam")), "MALFORMED_FRAME", 5, "category not defined"),
        "categories_duplicate": (_pack(_send(intent="consent_request", categories=["utility", "utility"])), "MALFORMED_FRAME", 5, "the same category twice"),
        "categories_empty": (_pack(_send(intent="consent_request", categories=[])), "MALFORMED_FRAME", 5, "a consent request for nothing"),
        "ack_empty": (_pack({"t": 23, "delivery_ids": []}), "MALFORMED_FRAME", None, "ACK with no ids"),
        "ack_too_many": (_pack({"t": 23, "delivery_ids": list(range(1, limits.MAX_ACK_IDS + 2))}), "FRAME_TOO_LARGE", None, "ACK over MAX_ACK_IDS"),
        "array_over_max_items": (_pack({"t": 20, "id": 9, "junk": [0] * (limits.MAX_ARRAY_ITEMS + 1)}), "FRAME_TOO_LARGE", 9, "an array longer than any type allows, under an unknown key: refused by the msgpack layer (101)"),
        "prekeys_upload_empty": (_pack({"t": 10, "id": 1, "one_time": []}), "MALFORMED_FRAME", 1, "upload carrying no key"),
        "prekeys_duplicate_ids": (_pack({"t": 10, "id": 1, "one_time": [{"key_id": 1, "public": K32}, {"key_id": 1, "public": K32B}]}), "MALFORMED_FRAME", 1, "two one-time prekeys with one id"),
        "record_unknown_key": (_pack({"t": 10, "id": 1, "one_time": [{"key_id": 1, "public": K32, "private": K32}]}), "MALFORMED_FRAME", 1, "a private key field inside a record"),
        "record_as_array": (_pack({"t": 10, "id": 1, "signed_prekey": [7, K32, SIG]}), "MALFORMED_FRAME", 1, "record sent as an array"),
        # SPEC §2.3: 101 exactly when a str, bin or array is longer than its type's maximum.
        "public_key_long": (_pack({"t": 10, "id": 1, "one_time": [{"key_id": 1, "public": K32 + b"\x00"}]}), "FRAME_TOO_LARGE", 1, "33-byte public key: longer than bin 32"),
        "msg_id_long": (_pack(_send(msg_id=MID + b"\x00")), "FRAME_TOO_LARGE", 5, "17-byte msg_id: longer than bin 16"),
        "signature_long": (_pack({"t": 3, "id": 2, "handle": "alice", "signature": SIG + b"\x00"}), "FRAME_TOO_LARGE", 2, "65-byte signature: longer than bin 64"),
        "signature_short": (_pack({"t": 3, "id": 2, "handle": "alice", "signature": SIG[:63]}), "MALFORMED_FRAME", 2, "63-byte signature: shorter than bin 64"),
        "categories_too_many": (_pack(_send(intent="consent_request", categories=["utility", "marketing", "utility"])), "FRAME_TOO_LARGE", 5, "three categories: longer than array 1 … 2"),
        "reason_too_long": (_pack({"t": 9, "code": 100, "reason": "x" * 201}), "FRAME_TOO_LARGE", None, "a 201-character reason"),
        "public_key_short": (_pack({"t": 10, "id": 1, "one_time": [{"key_id": 1, "public": K32[:31]}]}), "MALFORMED_FRAME", 1, "31-byte public key"),
        "reason_on_refusal": (_pack({"t": 9, "code": 400, "reason": "blocked"}), "MALFORMED_FRAME", None, "reason only allowed with 1xx codes"),
        "month_invalid": (_pack({"t": 43, "id": 1, "month": "2026-13"}), "MALFORMED_FRAME", 1, "month 13"),
        "bill_salt_short": (_pack({"t": 46, "re": 4, "month": "2026-11", "entry": b"\x01", "index": 0, "proof": [], "sth": b"\x02", "salt": b"\x03" * 15, "start": 0, "items": []}), "MALFORMED_FRAME", None, "a 15-byte salt: shorter than bin 16"),
        "bill_item_too_large": (_pack({"t": 46, "re": 4, "month": "2026-11", "entry": b"\x01", "index": 0, "proof": [], "sth": b"\x02", "salt": b"\x03" * 16, "start": 0, "items": [b"\x04" * (limits.MAX_BILL_ITEM_BYTES + 1)]}), "FRAME_TOO_LARGE", None, "an item over MAX_BILL_ITEM_BYTES"),
        "log_consistency_from_zero": (_pack({"t": 52, "id": 4, "first": 0, "second": 8}), "MALFORMED_FRAME", 4, "a proof from size 0 proves nothing (§15.2)"),
        "log_entries_count_over_max": (_pack({"t": 56, "id": 4, "start": 0, "count": limits.MAX_LOG_ENTRIES + 1}), "MALFORMED_FRAME", 4, "count over MAX_LOG_ENTRIES"),
        "log_inclusion_entry_too_large": (_pack({"t": 54, "id": 4, "entry": b"\x00" * (limits.MAX_LOG_ENTRY_BYTES + 1), "size": 3}), "FRAME_TOO_LARGE", 4, "an entry over MAX_LOG_ENTRY_BYTES"),
        "log_proof_hash_long": (_pack({"t": 53, "re": 4, "proof": [K32 + b"\x00"]}), "FRAME_TOO_LARGE", None, "a 33-byte hash in a proof: longer than bin 32"),
        # SPEC §2.2.5: `re` echoes a readable top-level `id` whatever else is wrong.
        "id_with_ext_type": (_pack({"t": 11, "id": 3, "handle": msgpack.ExtType(5, b"x")}), "MALFORMED_FRAME", 3, "extension type 5 in a request with a readable id"),
        "id_with_timestamp_ext": (bytes.fromhex("83a1740ba2696403a668616e646c65d6ff00000001"), "MALFORMED_FRAME", 3, "timestamp extension (-1) in a request with a readable id"),
        "id_with_bad_timestamp": (bytes.fromhex("83a1740ba2696403a668616e646c65d4ff00"), "MALFORMED_FRAME", 3, "a timestamp extension of a length it does not define: skipped by its length"),
        "id_with_duplicate_key": (bytes.fromhex("84a1740ba2696403a668616e646c65a3626f62a668616e646c65a3626f62"), "MALFORMED_FRAME", 3, "key handle twice in a request with a readable id"),
        "id_with_int_map_key": (bytes.fromhex("84a1740ba2696403a668616e646c65a3626f620101"), "MALFORMED_FRAME", 3, "map key 1 in a request with a readable id"),
        "id_with_too_deep": (_pack({"t": 11, "id": 3, "handle": deep}), "MALFORMED_FRAME", 3, "nesting too deep in a request with a readable id"),
        "id_with_unknown_type": (_pack({"t": 90, "id": 3, "future": b"field"}), "UNKNOWN_FRAME_TYPE", 3, "unknown t in a message with a readable id"),
        "id_on_a_notification": (_pack({"t": 23, "id": 3, "delivery_ids": [1]}), "MALFORMED_FRAME", 3, "an ACK with an id key: the id is echoed whatever t is"),
        "id_largest": (_pack({"t": 11, "id": 2**32 - 1, "handle": "B"}), "MALFORMED_FRAME", 2**32 - 1, "the largest id, echoed"),
        "id_key_non_canonical": (bytes.fromhex("83a1740bd9026964" "03a668616e646c65a142"), "MALFORMED_FRAME", 3, "id key as str8: still the str key id"),
        "id_in_a_map_of_17_entries": (_pack({"t": 11, "id": 3, "handle": "bob", **{f"x{i}": i for i in range(14)}}), "MALFORMED_FRAME", None, "a map of 17 entries: larger than any frame, no re"),
        "id_twice": (bytes.fromhex("84a1740ba2696403a2696404a668616e646c65a3626f62"), "MALFORMED_FRAME", None, "key id twice: no re"),
        "id_as_bin_key": (bytes.fromhex("83a1740bc4026964" "03a668616e646c65a3626f62"), "MALFORMED_FRAME", None, "id key sent as bin: not the str key id, no re"),
        "id_as_float": (_pack({"t": 11, "id": 3.0, "handle": "bob"}), "MALFORMED_FRAME", None, "id is a float: no re"),
        "id_as_bad_utf8_str": (bytes.fromhex("83a1740ba26964a1b0a668616e646c65a3626f62"), "MALFORMED_FRAME", None, "id is a str that is not UTF-8: no re"),
        "id_as_bool": (_pack({"t": 11, "id": True, "handle": "bob"}), "MALFORMED_FRAME", None, "id is a boolean: no re"),
        "id_only_nested": (_pack({"t": 10, "one_time": [{"key_id": 1, "public": K32, "id": 3}]}), "MALFORMED_FRAME", None, "id only inside a nested map: no re"),
        "id_after_truncation": (_pack({"t": 11, "id": 3, "handle": "bob"})[:-1], "MALFORMED_FRAME", None, "the map is not complete: no re"),
        # SPEC §2.5 ranges and presence rules.
        "time_over_max": (_pack({"t": 5, "id": 9, "new_identity_key": K32B, "issued_at": 2**53, "old_signature": SIG, "new_signature": SIG}), "MALFORMED_FRAME", 9, "issued_at 2^53: times end at 2^53-1"),
        "retry_after_without_402": (_pack({"t": 9, "code": 400, "re": 1, "retry_after": 5}), "MALFORMED_FRAME", None, "retry_after only with 402 and 902"),
        "rate_limited_without_retry_after": (_pack({"t": 9, "code": 402, "re": 1}), "MALFORMED_FRAME", None, "402 requires retry_after"),
        "store_unavailable_without_retry_after": (_pack({"t": 9, "code": 902, "re": 1}), "MALFORMED_FRAME", None, "902 requires retry_after"),
        "retry_after_zero": (_pack({"t": 9, "code": 402, "re": 1, "retry_after": 0}), "MALFORMED_FRAME", None, "retry_after is at least 1 ms"),
        "reason_empty": (_pack({"t": 9, "code": 100, "reason": ""}), "MALFORMED_FRAME", None, "an empty reason: omit it instead"),
        "code_under_100": (_pack({"t": 9, "code": 99}), "MALFORMED_FRAME", None, "error codes are 100 … 999"),
        "statement_empty": (_pack({"t": 30, "id": 1, "statement": b""}), "MALFORMED_FRAME", 1, "an empty signed statement"),
        "statement_too_large": (_pack({"t": 30, "id": 1, "statement": b"\x05" * (limits.MAX_STATEMENT_BYTES + 1)}), "FRAME_TOO_LARGE", 1, "a statement over MAX_STATEMENT_BYTES"),
        "statements_item_empty": (_pack({"t": 32, "re": 1, "statements": [b""]}), "MALFORMED_FRAME", None, "an empty signed statement in a listing"),
        "profile_empty": (_pack({"t": 42, "re": 1, "handle": "skyways.air", "identity_key": K32, "profile": b""}), "MALFORMED_FRAME", None, "an empty signed profile: omit it instead"),
        "badge_empty": (_pack({"t": 42, "re": 1, "handle": "skyways.air", "identity_key": K32, "badge": b""}), "MALFORMED_FRAME", None, "an empty badge: omit it instead"),
        "statements_list_without_after": (_pack({"t": 31, "id": 1}), "MALFORMED_FRAME", 1, "after is required (0 for the start)"),
        "prekeys_upload_without_one_time": (_pack({"t": 10, "id": 1, "signed_prekey": {"key_id": 7, "public": K32B, "signature": SIG}}), "MALFORMED_FRAME", 1, "one_time is required (may be empty)"),
        "month_non_ascii_digits": (_pack({"t": 43, "id": 1, "month": "\u0662\u0660\u0662\u0666-11"}), "MALFORMED_FRAME", 1, "Arabic-Indic digits in a month"),
        "handle_trailing_dot": (_pack({"t": 11, "id": 1, "handle": "airline."}), "MALFORMED_FRAME", 1, "handle ends with a dot (a lookalike of airline)"),
        "handle_trailing_hyphen": (_pack({"t": 11, "id": 1, "handle": "airline-"}), "MALFORMED_FRAME", 1, "handle ends with a hyphen"),
        "handle_double_punctuation": (_pack({"t": 11, "id": 1, "handle": "air..line"}), "MALFORMED_FRAME", 1, "two punctuation characters in a row"),
        "handle_mixed_double_punctuation": (_pack({"t": 11, "id": 1, "handle": "air_-line"}), "MALFORMED_FRAME", 1, "two different punctuation characters in a row"),
        "pow_over_the_cost_bound": (_pack(_hello(pow={"bits": 7, "opslimit": 2, "memlimit": 16 * 1024 * 1024})), "MALFORMED_FRAME", None, "proof of work expected to take over POW_MAX_EXPECTED_SOLVE_MS"),
        "pow_memlimit_not_kib": (_pack(_hello(pow={"bits": 1, "opslimit": 1, "memlimit": 1024 * 1024 + 1})), "MALFORMED_FRAME", None, "memlimit not a multiple of 1024"),
        "pow_no_bits": (_pack(_hello(pow={"bits": 0, "opslimit": 1, "memlimit": 1024 * 1024})), "MALFORMED_FRAME", None, "difficulty 0: omit pow instead"),
        "pow_nonce_short": (_pack({"t": 2, "id": 1, "handle": "alice", "kind": "user", "identity_key": K32, "signature": SIG, "pow_nonce": N16[:15]}), "MALFORMED_FRAME", 1, "15-byte proof-of-work nonce"),
        "invite_long": (_pack({"t": 2, "id": 1, "handle": "alice", "kind": "user", "identity_key": K32, "signature": SIG, "invite": N16 + b"\x00"}), "FRAME_TOO_LARGE", 1, "17-byte invite: longer than bin 16"),
        "kind_unknown": (_pack({"t": 2, "id": 1, "handle": "alice", "kind": "admin", "identity_key": K32, "signature": SIG}), "MALFORMED_FRAME", 1, "account kind not defined"),
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
    transcript = register_transcript(K32, K32B, "alice", "user", K32, handshake_hash=K64)
    solved = puzzle.solve(transcript, K32B, cost.bits, cost.opslimit, cost.memlimit)
    before = (int.from_bytes(solved, "big") - 1).to_bytes(16, "big")
    for nonce in (solved, before) if solved != bytes(16) else (solved,):
        digest = puzzle.proof_digest(transcript, K32B, nonce, cost.opslimit, cost.memlimit)
        out.append(
            {
                "relay_key": K32.hex(), "challenge": K32B.hex(), "handshake_hash": K64.hex(),
                "handle": "alice", "kind": "user",
                "identity_key": K32.hex(), "bits": cost.bits, "opslimit": cost.opslimit,
                "memlimit": cost.memlimit, "registration_transcript": transcript.hex(),
                "pow_nonce": nonce.hex(), "digest": digest.hex(),
                "leading_zero_bits": puzzle.leading_zero_bits(digest),
                "solves": puzzle.verify(transcript, K32B, nonce, cost.bits, cost.opslimit, cost.memlimit),
            }
        )  # fmt: skip
    return out


def channel_vectors() -> dict[str, object]:
    """SPEC §1.3: a whole handshake and the first frames each way, from fixed keys.

    The relay's key pair and Noise static come from ``relay_seed``; the two
    ephemerals are fixed; the LOGIN is signed by the identity key of
    ``identity_seed`` over the transcript with this handshake's hash (SPEC §4.3)."""
    relay_seed, identity_seed = bytes(range(100, 132)), bytes(range(200, 232))
    client_e, relay_e = bytes(range(1, 33)), bytes(range(33, 65))
    signing = SigningKey(relay_seed)
    relay_key = bytes(signing.verify_key)
    static = channel.relay_static_key(relay_seed)
    binding = channel.static_binding(signing, static.public)
    relay = channel.RelayChannel(static, binding, lambda n: relay_e)
    client = channel.ClientChannel(lambda n: client_e)
    first = client.start()
    second = relay.receive_handshake(first)
    client.receive_handshake(second)
    assert client.handshake_hash == relay.handshake_hash and client.handshake_hash is not None
    hh = client.handshake_hash
    identity = SigningKey(identity_seed)
    transcript = login_transcript(relay_key, K32B, "alice", handshake_hash=hh)
    frames: list[tuple[str, f.Frame]] = [
        ("relay", f.Hello(version=2, relay_key=relay_key, challenge=K32B,
                          expires_at=T0 + 30_000, now=T0)),
        ("client", f.Login(id=1, handle="alice", signature=identity.sign(transcript).signature)),
        ("relay", f.Welcome(re=1, handle="alice", kind="user", queued=0, one_time_prekeys=0,
                            has_signed_prekey=False)),
        ("client", f.Ack(delivery_ids=(1,))),
    ]  # fmt: skip
    sealed = []
    for side, frame in frames:
        plaintext = encode(frame)
        message = (relay if side == "relay" else client).encrypt(plaintext)
        sealed.append({"from": side, "frame": to_json(frame), "plaintext": plaintext.hex(),
                       "message": message.hex()})  # fmt: skip
    return {
        "protocol_name": channel.PROTOCOL_NAME.decode(), "prologue": channel.PROLOGUE.hex(),
        "relay_seed": relay_seed.hex(), "relay_key": relay_key.hex(),
        "relay_static_private": static.private.hex(), "relay_static_public": static.public.hex(),
        "binding": binding.hex(), "client_ephemeral": client_e.hex(),
        "relay_ephemeral": relay_e.hex(), "handshake": [first.hex(), second.hex()],
        "handshake_hash": hh.hex(), "identity_seed": identity_seed.hex(),
        "login_transcript": transcript.hex(), "frames": sealed,
    }  # fmt: skip


def main() -> None:
    for folder in ("valid", "invalid"):
        shutil.rmtree(HERE / folder, ignore_errors=True)
        (HERE / folder).mkdir()
    for name, frame in valid_frames().items():
        record = {"hex": encode(frame).hex(), "frame": to_json(frame)}
        _write(HERE / "valid" / f"{name}.json", record)
    for name, (data, code, re, description) in invalid_vectors().items():
        invalid: dict[str, object] = {
            "hex": data.hex(), "error": code, "re": re, "description": description,
        }  # fmt: skip
        _write(HERE / "invalid" / f"{name}.json", invalid)
    _write(HERE / "skeletons.json", {"skeletons": skeleton_vectors()})
    _write(HERE / "pow.json", {"pow": pow_vectors()})
    _write(HERE / "channel.json", channel_vectors())


def _write(path: Path, record: Mapping[str, object]) -> None:
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
