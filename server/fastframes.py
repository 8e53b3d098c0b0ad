"""SENT and DELIVER encoded straight to canonical bytes, without building frames.

Why: they are two of the four frames per message and the relay makes them from
values that were already checked — the SEND frame the codec decoded strictly,
or queue rows written from such frames. Building a frame dataclass re-runs its
``__post_init__`` checks and the codec's generic encoder walks its fields; here
one dict literal goes to msgpack. The bytes are the codec's canonical encoding
(``t`` first, declaration order, ``None`` fields omitted), which
tests/server/test_fastframes.py checks against :func:`blindrelay.protocol.codec.encode`.
Neither frame changes the connection's state, so they may bypass the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from blindrelay.protocol.frames import FrameType

from .storage import QueuedEnvelope

_SENT = int(FrameType.SENT)
_DELIVER = int(FrameType.DELIVER)
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def sent(re: int, msg_id: bytes, at: int) -> bytes:
    return _pack({"t": _SENT, "re": re, "msg_id": msg_id, "at": at})  # type: ignore[no-any-return]


def deliver(envelope: QueuedEnvelope) -> bytes:
    return deliver_fields(
        envelope.delivery_id, envelope.sender, envelope.sender_kind, envelope.msg_id,
        envelope.intent, envelope.sent_at, envelope.body, envelope.category, envelope.categories,
    )  # fmt: skip


def deliver_row(row: list[Any]) -> bytes:
    """From a queue row as the writer sends it (:func:`.jobs.envelope_row`)."""
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
