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

import msgpack

from blindrelay.protocol.frames import FrameType

from .storage import QueuedEnvelope

_SENT = int(FrameType.SENT)
_DELIVER = int(FrameType.DELIVER)
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def sent(re: int, msg_id: bytes, at: int) -> bytes:
    return _pack({"t": _SENT, "re": re, "msg_id": msg_id, "at": at})  # type: ignore[no-any-return]


def deliver(envelope: QueuedEnvelope) -> bytes:
    frame = {
        "t": _DELIVER,
        "delivery_id": envelope.delivery_id,
        "sender": envelope.sender,
        "sender_kind": envelope.sender_kind,
        "msg_id": envelope.msg_id,
        "intent": envelope.intent,
        "sent_at": envelope.sent_at,
        "body": envelope.body,
    }
    if envelope.category is not None:
        frame["category"] = envelope.category
    if envelope.categories is not None:
        frame["categories"] = list(envelope.categories)
    return _pack(frame)  # type: ignore[no-any-return]
