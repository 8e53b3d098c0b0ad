"""The four frames of every message without the generic codec: SEND, SENT, DELIVER, ACK.

Why: one message is four frames — SEND and SENT between sender and relay,
DELIVER and ACK between relay and recipient — and the generic codec
(:mod:`.codec`) walks a plan per field to encode and runs a Python hook per map
to decode. Here each of the four is one msgpack call plus exact type checks.

Encoding. ``encode_send``, ``encode_sent``, ``encode_deliver`` and
``encode_ack`` lay out the codec's canonical bytes (``t`` first, fields in
declaration order, ``None`` fields omitted) from values the caller has already
checked — a frame the codec decoded strictly, a queue row written from one, an
outbox entry checked when it was queued. They do not check them again: building
the frame would re-run its ``__post_init__``, which is what they save.

Reading. ``read_send``, ``read_sent``, ``read_deliver`` and ``read_ack`` return
the frame if ``data`` is one the codec accepts and this module can prove it
reads the same; otherwise None, which means "ask the codec", never "invalid".
So ``read_x(data) or codec.decode(data)`` is ``codec.decode(data)``: the same
frame, or the same error (SPEC §2.3). The proof, rule by rule of the codec:

- at most ``MAX_FRAME_BYTES``; a fixmap (at most 15 keys) whose first key is
  the str ``t`` with this frame's tag — the tag decides the class, as in
  :func:`.codec.decode`;
- msgpack decodes all of it (no trailing bytes, valid UTF-8, str keys,
  arrays within ``MAX_ARRAY_ITEMS``); the map holds as many keys as its header
  counts, so no key appeared twice (msgpack keeps the last of a duplicate
  silently);
- every key is a field of the frame and its value has exactly the field's
  wire type (``bool`` is not ``int``, nil is not an omitted optional field,
  an ``ExtType`` or ``Timestamp`` is no field's type, array items too); the
  fields nest at most two deep;
- the frame's own constructor then runs the same checks as after the codec
  (a missing key is its TypeError).

tests/protocol/test_fastcodec.py holds both directions against the codec with
hypothesis: valid frames give identical bytes, and random or mutated bytes are
read as the codec reads them or left to it.

Not here: what the frames mean (:mod:`.frames`), any other frame (the codec),
who may send them when (:mod:`.connection`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TypeVar

import msgpack

from . import limits
from .frames import Ack, Deliver, Frame, FrameType, Send, Sent

F = TypeVar("F", bound=Frame)

_SEND = int(FrameType.SEND)
_SENT = int(FrameType.SENT)
_DELIVER = int(FrameType.DELIVER)
_ACK = int(FrameType.ACK)

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
"""One packer for every encoding: ``pack`` runs in C under the GIL, start to end."""

_ACK_HEAD: bytes = _pack({"t": _ACK, "delivery_ids": []})[:-1]
"""The canonical ACK up to its id array: a map of 2, ``t`` = 23, the key ``delivery_ids``."""

MAX_FAST_KEYS = 15
"""Keys in a fixmap, the only map header read here: SEND and DELIVER have at most 9."""


# --- encoding -------------------------------------------------------------------


def encode_send(
    id: int,
    to: str,
    msg_id: bytes,
    intent: str,
    body: bytes,
    category: str | None = None,
    categories: Sequence[str] | None = None,
) -> bytes:
    """``codec.encode(Send(...))`` for checked values (SPEC §6.1)."""
    frame: dict[str, object] = {
        "t": _SEND, "id": id, "to": to, "msg_id": msg_id, "intent": intent, "body": body,
    }  # fmt: skip
    return _pack_intent_fields(frame, category, categories)


def encode_sent(re: int, msg_id: bytes, at: int) -> bytes:
    """``codec.encode(Sent(...))`` for checked values (SPEC §6.3)."""
    return _pack({"t": _SENT, "re": re, "msg_id": msg_id, "at": at})  # type: ignore[no-any-return]


def encode_deliver(
    delivery_id: int,
    sender: str,
    sender_kind: str,
    msg_id: bytes,
    intent: str,
    sent_at: int,
    body: bytes,
    category: str | None = None,
    categories: Sequence[str] | None = None,
) -> bytes:
    """``codec.encode(Deliver(...))`` for checked values (SPEC §6.4)."""
    frame: dict[str, object] = {
        "t": _DELIVER, "delivery_id": delivery_id, "sender": sender, "sender_kind": sender_kind,
        "msg_id": msg_id, "intent": intent, "sent_at": sent_at, "body": body,
    }  # fmt: skip
    return _pack_intent_fields(frame, category, categories)


def _pack_intent_fields(
    frame: dict[str, object], category: str | None, categories: Sequence[str] | None
) -> bytes:
    """``frame`` packed with the optional fields SEND and DELIVER end with, when set."""
    if category is not None:
        frame["category"] = category
    if categories is not None:
        frame["categories"] = categories
    return _pack(frame)  # type: ignore[no-any-return]


def encode_ack(delivery_ids: Sequence[int]) -> bytes:
    """``codec.encode(Ack(delivery_ids))`` for checked ids (SPEC §6.5)."""
    return _ACK_HEAD + _pack(delivery_ids)  # type: ignore[no-any-return]


# --- reading --------------------------------------------------------------------

Reader = Callable[[bytes], F | None]


def _reader(cls: type[F]) -> Reader[F]:
    """The reader of one frame class, its wire types taken from the annotations once."""
    head = b"\xa1t" + _pack(int(cls.TYPE))
    scalars: dict[str, type] = {"t": int}
    arrays: list[tuple[str, type]] = []
    hints = typing.get_type_hints(cls)
    for field in fields(cls):
        wire, item = _wire_type(hints[field.name])
        scalars[field.name] = wire
        if item is not None:
            arrays.append((field.name, item))
    if len(scalars) > MAX_FAST_KEYS:  # pragma: no cover - a frame grew past a fixmap
        raise TypeError(f"{cls.__name__} has more fields than a fixmap holds")
    max_frame_bytes = limits.MAX_FRAME_BYTES
    unpackb = msgpack.unpackb
    max_items = limits.MAX_ARRAY_ITEMS

    def read(data: bytes) -> F | None:
        if data[1:4] != head or not 0x81 <= data[0] <= 0x8F or len(data) > max_frame_bytes:
            return None
        try:
            obj = unpackb(data, use_list=False, max_map_len=MAX_FAST_KEYS, max_array_len=max_items)
        except Exception:  # malformed, trailing bytes, UTF-8, a limit: the codec says which
            return None
        if type(obj) is not dict or len(obj) != data[0] & 0x0F:
            return None
        for key, value in obj.items():
            if type(value) is not scalars.get(key):
                return None
        for key, item in arrays:
            value = obj.get(key)
            if value is not None:
                for element in value:
                    if type(element) is not item:
                        return None
        del obj["t"]
        try:
            return cls(**obj)
        except Exception:  # its checks refused a value, or a required key is missing
            return None

    read.__name__ = read.__qualname__ = f"read_{cls.__name__.lower()}"
    read.__doc__ = f"The {cls.__name__} ``data`` strictly decodes to, or None: ask the codec."
    return read


def _wire_type(hint: object) -> tuple[type, type | None]:
    """``(type of the msgpack value, type of each array item or None)`` for a field."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, type) and hint in (int, str, bytes):
        return hint, None
    if typing.get_origin(hint) is tuple:
        item, _ellipsis = args
        if item in (int, str, bytes):
            return tuple, item
    elif len(args) == 1:  # X | None: nil is refused like any other wrong type
        return _wire_type(args[0])
    raise TypeError(f"no fast wire form for {hint!r}")  # pragma: no cover


read_send: Reader[Send] = _reader(Send)
read_sent: Reader[Sent] = _reader(Sent)
read_deliver: Reader[Deliver] = _reader(Deliver)
read_ack: Reader[Ack] = _reader(Ack)
