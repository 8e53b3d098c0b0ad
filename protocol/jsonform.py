"""A JSON rendering of frames, for test vectors and human-readable traces.

Frames map to ``{"type": NAME, "fields": {...}}``; ``bytes`` become
``{"bin": HEX}`` so a reader can tell bin from str without the schema; nested
records are maps and tuples are lists. ``from_json`` inverts it exactly, so a
vector file fully determines the frame. Not a wire format.
"""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

from .frames import FRAME_CLASSES, RECORD_TYPES, Frame, FrameType, Record

JsonValue = Any


def to_json(frame: Frame) -> dict[str, JsonValue]:
    return {"type": frame.TYPE.name, "fields": _fields_to_json(frame)}


def _fields_to_json(obj: Frame | Record) -> dict[str, JsonValue]:
    return {
        f.name: _value_to_json(getattr(obj, f.name))
        for f in fields(obj)
        if getattr(obj, f.name) is not None
    }


def _value_to_json(value: object) -> JsonValue:
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, RECORD_TYPES):
        return _fields_to_json(value)
    if isinstance(value, tuple):
        return [_value_to_json(v) for v in value]
    return value


def from_json(obj: dict[str, JsonValue]) -> Frame:
    cls = FRAME_CLASSES[FrameType[obj["type"]]]
    return typing.cast(Frame, _build(cls, obj["fields"]))


def _build(cls: type[Frame] | type[Record], data: dict[str, JsonValue]) -> object:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {name: _value_from_json(hints[name], v) for name, v in data.items()}
    return cls(**kwargs)


def _value_from_json(hint: object, value: JsonValue) -> object:
    if isinstance(value, dict) and set(value) == {"bin"}:
        return bytes.fromhex(value["bin"])
    if isinstance(value, dict):
        record = next(r for r in RECORD_TYPES if r in typing.get_args(hint) or r is hint)
        return _build(record, value)
    if isinstance(value, list):
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
        item_hint = typing.get_args(inner)[0] if typing.get_origin(inner) is tuple else inner
        return tuple(_value_from_json(item_hint, v) for v in value)
    return value
