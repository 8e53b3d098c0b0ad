"""Hypothesis strategies for valid frames, derived from the frame classes."""

from __future__ import annotations

import typing
from dataclasses import fields

from hypothesis import strategies as st

from blindrelay.protocol import frames as f
from blindrelay.protocol import limits

handles = st.from_regex(r"[a-z0-9]{1,10}(?:[._-][a-z0-9]{1,6}){0,3}", fullmatch=True).filter(
    lambda h: len(h) >= 3
)
u32_ids = st.integers(1, 2**32 - 1)
times = st.integers(0, f.MAX_TIME_MS)
counts = st.integers(0, f.MAX_DELIVERY_ID)
bodies = st.binary(min_size=1, max_size=2048)
categories = st.sampled_from(limits.CATEGORIES)

BY_NAME: dict[str, st.SearchStrategy[object]] = {
    "id": u32_ids,
    "re": u32_ids,
    "key_id": st.integers(0, 2**32 - 1),
    "handle": handles,
    "to": handles,
    "sender": handles,
    "kind": st.sampled_from(["user", "business"]),
    "sender_kind": st.sampled_from(["user", "business"]),
    "version": st.integers(1, 255),
    "public": st.binary(min_size=32, max_size=32),
    "signature": st.binary(min_size=64, max_size=64),
    "old_signature": st.binary(min_size=64, max_size=64),
    "new_signature": st.binary(min_size=64, max_size=64),
    "identity_key": st.binary(min_size=32, max_size=32),
    "new_identity_key": st.binary(min_size=32, max_size=32),
    "relay_key": st.binary(min_size=32, max_size=32),
    "challenge": st.binary(min_size=32, max_size=32),
    "msg_id": st.binary(min_size=16, max_size=16),
    "body": bodies,
    "statement": st.binary(min_size=1, max_size=limits.MAX_STATEMENT_BYTES),
    "statements": st.lists(st.binary(min_size=1, max_size=64), max_size=5).map(tuple),
    "profile": st.binary(min_size=1, max_size=512),
    "badge": st.binary(min_size=1, max_size=256),
    "delivery_id": st.integers(1, f.MAX_DELIVERY_ID),
    "delivery_ids": st.lists(st.integers(1, f.MAX_DELIVERY_ID), min_size=1, max_size=20).map(tuple),
    "month": st.from_regex(r"[0-9]{4}-(0[1-9]|1[0-2])", fullmatch=True),
    "category": categories,
    "count": counts,
    "code": st.sampled_from([100, 101, 103, 400, 402, 900]),
    "reason": st.text(min_size=1, max_size=50),
    "next": st.integers(1, f.MAX_DELIVERY_ID),
    "after": counts,
    "retry_after": st.integers(1, f.MAX_TIME_MS),
    "has_signed_prekey": st.booleans(),
    "pow_nonce": st.binary(min_size=limits.POW_NONCE_BYTES, max_size=limits.POW_NONCE_BYTES),
    "invite": st.binary(min_size=limits.INVITE_BYTES, max_size=limits.INVITE_BYTES),
    "leaf_hash": st.binary(min_size=32, max_size=32),
    "size": st.integers(1, f.MAX_DELIVERY_ID),
    "index": counts,
    "start": counts,
    "first": st.integers(1, f.MAX_DELIVERY_ID),
    "second": st.integers(1, f.MAX_DELIVERY_ID),
    "proof": st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple),
    "entries": st.lists(st.binary(min_size=1, max_size=64), max_size=5).map(tuple),
    "sth": st.binary(min_size=1, max_size=limits.MAX_TREE_HEAD_BYTES),
    "entry": st.binary(min_size=1, max_size=limits.MAX_LOG_ENTRY_BYTES),
    "salt": st.binary(min_size=16, max_size=16),
    "items": st.lists(st.binary(min_size=1, max_size=limits.MAX_BILL_ITEM_BYTES), max_size=5).map(tuple),
    "pow": st.builds(
        f.ProofOfWork,
        bits=st.integers(1, 6),
        opslimit=st.integers(1, 2),
        memlimit=st.integers(1024, 4096).map(lambda kib: kib * 1024),
    ),
}

SIGNED = st.builds(f.SignedPreKeyRecord, key_id=BY_NAME["key_id"], public=BY_NAME["public"], signature=BY_NAME["signature"])
ONE_TIME = st.builds(f.OneTimePreKeyRecord, key_id=BY_NAME["key_id"], public=BY_NAME["public"])
USAGE = st.builds(f.UsageCount, category=categories, count=counts)
LOG_PROOF = st.builds(
    f.LogProof, entry=BY_NAME["entry"], index=counts, proof=BY_NAME["proof"], sth=BY_NAME["sth"]
)


def _value(name: str, hint: object) -> st.SearchStrategy[object]:
    if name in BY_NAME:
        return BY_NAME[name]
    if name == "one_time" and typing.get_origin(hint) is tuple:
        return st.lists(ONE_TIME, max_size=5, unique_by=lambda k: k.key_id).map(tuple)
    if hint is f.SignedPreKeyRecord or f.SignedPreKeyRecord in typing.get_args(hint):
        return SIGNED
    if hint is f.OneTimePreKeyRecord or f.OneTimePreKeyRecord in typing.get_args(hint):
        return ONE_TIME
    if f.LogProof in typing.get_args(hint):
        return LOG_PROOF
    if name == "notifications":
        return st.lists(USAGE, max_size=2).map(tuple)
    if hint is int:
        return counts if name in {"queued", "one_time_prekeys", "remaining", "service_replies", "user_initiated"} else times
    raise LookupError(f"no strategy for field {name}: {hint}")


@st.composite
def _intent_fields(draw: st.DrawFn, *, relay: bool) -> dict[str, object]:
    intents = ["chat", "notification", "consent_request"] + (["statement"] if relay else [])
    intent = draw(st.sampled_from(intents))
    out: dict[str, object] = {"intent": intent}
    if intent == "notification":
        out["category"] = draw(categories)
    if intent == "consent_request":
        out["categories"] = tuple(draw(st.lists(categories, min_size=1, max_size=2, unique=True)))
    return out


def frame_strategy(cls: type[f.Frame]) -> st.SearchStrategy[f.Frame]:
    hints = typing.get_type_hints(cls)
    special = {"intent", "category", "categories"}
    kwargs: dict[str, st.SearchStrategy[object]] = {}
    for fld in fields(cls):
        if fld.name in special:
            continue
        strategy = _value(fld.name, hints[fld.name])
        optional = type(None) in typing.get_args(hints[fld.name])
        kwargs[fld.name] = st.none() | strategy if optional else strategy
    if cls is f.Error:
        kwargs["reason"] = st.none()
        kwargs["retry_after"] = st.none()  # only with 402, set below
    base = st.fixed_dictionaries(kwargs)
    if cls in (f.Send, f.Deliver):
        base = st.tuples(base, _intent_fields(relay=cls is f.Deliver)).map(lambda p: {**p[0], **p[1]})
    if cls is f.Error:
        base = st.tuples(base, BY_NAME["retry_after"]).map(
            lambda p: {**p[0], "retry_after": p[1]} if p[0]["code"] == 402 else p[0]
        )
    if cls is f.LogEntriesFetch:
        base = st.tuples(base, st.integers(1, limits.MAX_LOG_ENTRIES)).map(
            lambda p: {**p[0], "count": p[1]}
        )
    if cls is f.PrekeysUpload:
        base = base.filter(lambda kw: kw["signed_prekey"] is not None or kw["one_time"])
    return base.map(lambda kw: cls(**kw))


all_frames = st.one_of([frame_strategy(cls) for cls in f.FRAME_CLASSES.values()])
