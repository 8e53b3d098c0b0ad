"""The relay's hottest frames without the generic codec: SENT and DELIVER out, ACK in.

Why: SENT, DELIVER and ACK are three of the four frames per message.

- SENT and DELIVER are encoded straight to canonical bytes from values that
  were already checked — the SEND frame the codec decoded strictly, or queue
  rows written from such frames. Building a frame dataclass re-runs its
  ``__post_init__`` checks and the codec's generic encoder walks its fields;
  here one dict literal goes to msgpack. The bytes are the codec's canonical
  encoding (``t`` first, declaration order, ``None`` fields omitted).
- SEND and ACK come in once per message each (a customer acknowledges each
  notification on its own). :func:`send` and :func:`ack` read the codec's
  canonical encoding of exactly these frames with one msgpack call and exact
  type checks, and build the frame with its own validation; anything else —
  another key order, a duplicate key, a nil, a stray byte, a value out of
  range — returns None and goes through the strict codec, which then accepts
  it or refuses it with its documented error. So a fast path never accepts
  what the codec refuses, nor reads anything differently.

tests/server/test_fastframes.py checks all four against
:mod:`blindrelay.protocol.codec`. None of these frames changes the connection's
state (SEND and ACK are receivable once authenticated), so they may bypass the
machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from blindrelay.protocol import limits
from blindrelay.protocol.frames import MAX_DELIVERY_ID, Ack, FrameType, Send

from .store import QueuedEnvelope

_SENT = int(FrameType.SENT)
_DELIVER = int(FrameType.DELIVER)
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack

_ACK_HEAD = msgpack.packb({"t": int(FrameType.ACK), "delivery_ids": []})[:-1]
"""The canonical ACK up to its id array: map of 2, ``t`` = 23, key ``delivery_ids``."""
_ACK_IDS_AT = len(_ACK_HEAD)

_SEND_TAG = msgpack.packb({"t": int(FrameType.SEND)})[1:]
"""A canonical SEND's bytes after its map header: ``t`` first, then 20."""
_SEND_TYPES: dict[str, type] = {
    "t": int, "id": int, "to": str, "msg_id": bytes, "intent": str, "body": bytes,
    "category": str, "categories": tuple,
}  # fmt: skip
"""The exact type of each SEND key on the wire (an array arrives as a tuple)."""


def sent(re: int, msg_id: bytes, at: int) -> bytes:
    return _pack({"t": _SENT, "re": re, "msg_id": msg_id, "at": at})  # type: ignore[no-any-return]


def deliver(envelope: QueuedEnvelope) -> bytes:
    return deliver_fields(
        envelope.delivery_id, envelope.sender, envelope.sender_kind, envelope.msg_id,
        envelope.intent, envelope.sent_at, envelope.body, envelope.category, envelope.categories,
    )  # fmt: skip


def deliver_row(row: list[Any]) -> bytes:
    """From a queue row as the store returns it (:func:`.store.records.envelope_row`)."""
    return deliver_fields(row[0], row[2], row[3], row[4], row[5], row[8], row[9], row[6], row[7])


def deliver_fields(
    delivery_id: int,
    sender: str,
    sender_kind: str,
    msg_id: bytes,
    intent: str,
    sent_at: int,
    body: bytes,
    category: str | None,
    categories: Sequence[str] | None,
) -> bytes:
    frame = {
        "t": _DELIVER,
        "delivery_id": delivery_id,
        "sender": sender,
        "sender_kind": sender_kind,
        "msg_id": msg_id,
        "intent": intent,
        "sent_at": sent_at,
        "body": body,
    }
    if category is not None:
        frame["category"] = category
    if categories is not None:
        frame["categories"] = list(categories)
    return _pack(frame)  # type: ignore[no-any-return]


def send(data: bytes) -> Send | None:
    """The SEND that ``data`` strictly decodes to, if it is a canonical SEND; else None.

    As with :func:`ack`, None only means "ask the codec". Accepted: a map of
    at most 15 keys (its header says how many, so a duplicate key — which
    msgpack would silently merge — shows as a count that differs), ``t``
    first and 20, only SEND's keys, each of exactly its wire type, and then
    whatever ``Send``'s own checks accept. ext types are refused by msgpack
    (``max_ext_len=0``), invalid UTF-8 raises there; both fall through.
    """
    if (
        len(data) > limits.MAX_FRAME_BYTES
        or data[1 : 1 + len(_SEND_TAG)] != _SEND_TAG
        or not 0x82 <= data[0] <= 0x8F  # a fixmap of 2 to 15 keys
    ):
        return None
    try:
        fields = msgpack.unpackb(data, use_list=False, max_map_len=15, max_ext_len=0)
    except Exception:  # malformed, trailing bytes, ext: the codec says which
        return None
    if type(fields) is not dict or len(fields) != data[0] & 0x0F:
        return None
    types = _SEND_TYPES
    for key, value in fields.items():
        if type(value) is not types.get(key):
            return None
    categories = fields.get("categories")
    if categories is not None and any(type(c) is not str for c in categories):
        return None
    del fields["t"]
    try:
        return Send(**fields)
    except Exception:  # its checks refused a value, or a required key is missing
        return None


def ack(data: bytes) -> Ack | None:
    """The ACK that ``data`` strictly decodes to, if it is a canonical ACK; else None.

    None means "not recognised here", never "invalid": the caller then hands
    ``data`` to the codec, which accepts or refuses it (SPEC §2.3). What is
    accepted here is exactly what the codec accepts for these bytes: after the
    fixed head, the rest must be one array (no trailing bytes) of 1 to
    MAX_ACK_IDS plain integers in 1..MAX_DELIVERY_ID. The limits below make
    msgpack refuse any str, bin, map or ext inside at once instead of
    building it; nested arrays are not ints and fall through.
    """
    if not data.startswith(_ACK_HEAD) or len(data) > limits.MAX_FRAME_BYTES:
        return None
    try:
        ids = msgpack.unpackb(
            data[_ACK_IDS_AT:], use_list=False, max_array_len=limits.MAX_ACK_IDS,
            max_str_len=0, max_bin_len=0, max_map_len=0, max_ext_len=0,
        )  # fmt: skip
    except Exception:  # malformed, trailing bytes, over a limit: the codec says which
        return None
    if type(ids) is not tuple or not ids:
        return None
    for delivery_id in ids:
        if type(delivery_id) is not int or not 1 <= delivery_id <= MAX_DELIVERY_ID:
            return None
    return Ack(delivery_ids=ids)
