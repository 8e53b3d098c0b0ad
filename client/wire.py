"""Hand-laid msgpack for the hot path of sending: SEND out, SENT in, one body for many.

Each function produces or accepts exactly what :mod:`blindrelay.protocol.codec`
does for the same frame (tests compare them), and falls back to it where unsure.

Not here: the strict codec and its rules (``protocol.codec``), what is sent and
when (``outbox``, ``sending``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgpack

from blindrelay.protocol import frames, limits
from blindrelay.protocol.content import (
    Content,
    Data,
    MalformedContent,
    Receipt,
    Text,
    encode_content,
)

_SEND_TAG = int(frames.FrameType.SEND)
_SENT_TAG = int(frames.FrameType.SENT)
_SENT_PREFIX: bytes = b"\x84" + msgpack.packb("t") + msgpack.packb(_SENT_TAG)
"""How a canonical SENT starts (a map of its four fields, ``t`` first): the cheap
test that keeps every other frame off the SENT fast path."""
_SENT_MAX_BYTES = 64
"""A canonical SENT is at most 47 bytes; anything longer takes the strict decoder."""


class SendFields(Protocol):
    """What :func:`encode_send` reads of an outbox entry (``outbox.Outgoing``)."""

    @property
    def msg_id(self) -> bytes: ...
    @property
    def to(self) -> str: ...
    @property
    def envelope(self) -> bytes: ...
    @property
    def intent(self) -> str: ...
    @property
    def category(self) -> str | None: ...
    @property
    def categories(self) -> tuple[str, ...] | None: ...


def encode_send(packer: msgpack.Packer, request_id: int, outgoing: SendFields) -> bytes:
    """The SEND frame for ``outgoing``, byte for byte what the codec encodes.

    Every field was checked before the envelope entered the outbox (see
    :meth:`Client._check_send`), so building and re-validating a
    :class:`frames.Send` per message and walking the codec's generic plan
    (~10 µs) would only repeat that; this lays out the same canonical map:
    ``t`` first, fields in declaration order, absent optional fields omitted.
    A test compares it with :func:`blindrelay.protocol.codec.encode`.
    """
    fields: dict[str, object] = {
        "t": _SEND_TAG,
        "id": request_id,
        "to": outgoing.to,
        "msg_id": outgoing.msg_id,
        "intent": outgoing.intent,
        "body": outgoing.envelope,
    }
    if outgoing.category is not None:
        fields["category"] = outgoing.category
    if outgoing.categories is not None:
        fields["categories"] = outgoing.categories
    data: bytes = packer.pack(fields)
    return data


def parse_sent(data: bytes, packer: msgpack.Packer) -> tuple[int, bytes, int] | None:
    """``(re, msg_id, at)`` if ``data`` is exactly the codec's encoding of a valid SENT.

    The fast path for the one frame a bulk sender receives per message: the
    strict decoder spends ~12 µs on it. msgpack's plain unpacker reads the
    fields, and the bytes must equal the canonical encoding of what was read,
    which rules out duplicate, unknown or missing keys, other types and
    trailing bytes; the values are range-checked as :class:`frames.Sent`
    does. None means "not such a SENT": decode it strictly instead, so what is
    accepted, and how anything else is refused, stays the codec's decision.
    """
    if len(data) > _SENT_MAX_BYTES or not data.startswith(_SENT_PREFIX):
        return None
    try:
        fields = msgpack.unpackb(data)
    except Exception:  # any malformation: the strict decoder names it
        return None
    if type(fields) is not dict:
        return None
    re, msg_id, at = fields.get("re"), fields.get("msg_id"), fields.get("at")
    if type(re) is not int or type(msg_id) is not bytes or type(at) is not int:
        return None
    if (
        not 1 <= re <= frames.MAX_REQUEST_ID
        or len(msg_id) != limits.MESSAGE_ID_BYTES
        or not 0 <= at <= frames.MAX_TIME_MS
    ):
        return None
    if packer.pack({"t": _SENT_TAG, "re": re, "msg_id": msg_id, "at": at}) != data:
        return None  # not canonical: another key, a duplicate, another order or width
    return re, msg_id, at


def content_encoder(body: Text | Data | Receipt) -> Callable[[bytes], bytes]:
    """``encode_content(Content(msg_id, body))`` for many msg_ids, the body encoded once.

    A bulk send encrypts one body under a fresh msg_id per recipient. The id is
    a fixed-size bin in the canonical encoding, so the encodings under two ids
    differ in exactly those bytes: encoding under all-zero and all-one ids
    finds them, and each message splices its id in. If the encodings do not
    differ that way (a future content format), every id is encoded in full.
    Raises MalformedContent as ``encode_content`` does (too large).
    """
    size = limits.MESSAGE_ID_BYTES
    zeros = encode_content(Content(bytes(size), body))
    ones = encode_content(Content(b"\xff" * size, body))
    start = next((i for i, (a, b) in enumerate(zip(zeros, ones, strict=False)) if a != b), -1)
    end = start + size
    if (
        start < 0
        or len(zeros) != len(ones)
        or zeros[start:end] != bytes(size)
        or ones[start:end] != b"\xff" * size
        or zeros[end:] != ones[end:]
    ):
        return lambda msg_id: encode_content(Content(msg_id, body))  # pragma: no cover
    prefix, suffix = zeros[:start], zeros[end:]

    def encode(msg_id: bytes) -> bytes:
        if len(msg_id) != size:
            raise MalformedContent(f"id: message ids are exactly {size} bytes")
        return prefix + msg_id + suffix

    return encode


__all__ = ["SendFields", "content_encoder", "encode_send", "parse_sent"]
