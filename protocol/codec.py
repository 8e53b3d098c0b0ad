"""msgpack encoding of frames, strict enough for untrusted input (SPEC §2.3).

The codec owns msgpack and the tag ↔ class table and nothing else. Decoding
any byte string either returns a frame or raises :class:`MalformedFrame`,
:class:`FrameTooLarge` or :class:`UnknownFrameType`; nothing else escapes.

What "strict" means here, each rule a MUST of SPEC §2.3:

- the message is at most ``MAX_FRAME_BYTES`` and holds exactly one msgpack
  object, a map, with no trailing bytes;
- map keys are strings, no key appears twice, and every key is a field of the
  frame (or of the nested record) — unknown keys are refused, not ignored;
- every value has exactly the annotated type: ``bytes`` is msgpack bin, ``str``
  is msgpack str (valid UTF-8), ``int`` is never a bool, no floats, no nil
  except where a field is optional, no extension types at all;
- nesting is at most ``MAX_NESTING_DEPTH``.

Encoding is canonical: fields in declaration order, ``t`` first, optional
fields whose value is ``None`` omitted. Decoding then re-encoding a canonical
message gives the same bytes, which is what the vectors check.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

import msgpack

from . import limits
from .errors import FrameTooLarge, MalformedFrame, ProtocolError, UnknownFrameType
from .frames import (
    FRAME_CLASSES,
    MAX_REQUEST_ID,
    RECORD_TYPES,
    Frame,
    FrameType,
    required_field_names,
)

Converter = Callable[[object, str], object]
T = TypeVar("T")

TYPE_KEY = "t"
MAX_MAP_KEYS = 16
"""No frame or record has more fields than this; bounds map decoding work."""


def encode(frame: Frame) -> bytes:
    """Canonical bytes of ``frame``."""
    return _pack(_to_wire(frame, top=True))


def encode_object(obj: object) -> bytes:
    """Canonical bytes of a plain record (a signed object's body, SPEC §14)."""
    return _pack(_to_wire(obj))


def decode_object(cls: type[T], data: bytes, *, max_bytes: int) -> T:
    """Strictly decode a plain record of type ``cls`` (same rules as frames, SPEC §2.3)."""
    if len(data) > max_bytes:
        raise FrameTooLarge(f"{cls.__name__}: at most {max_bytes} bytes")
    obj = _unpack(data)
    if not isinstance(obj, dict):
        raise MalformedFrame(f"{cls.__name__}: must be a map")
    try:
        return typing.cast(T, _build(cls, obj, cls.__name__))
    except ProtocolError:
        raise
    except Exception as exc:
        raise MalformedFrame(f"invalid {cls.__name__}: {type(exc).__name__}") from None


def _pack(obj: dict[str, object]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _to_wire(obj: Any, *, top: bool = False) -> dict[str, object]:
    out: dict[str, object] = {TYPE_KEY: int(obj.TYPE)} if top else {}
    for name, shape in _wire_plan(type(obj)):
        value = getattr(obj, name)
        if value is None:
            continue
        if shape is _RECORD:
            value = _to_wire(value)
        elif shape is _RECORDS:
            value = [_to_wire(item) for item in value]
        out[name] = value
    return out


_SCALAR, _RECORD, _RECORDS = "scalar", "record", "records"


def _wire_plan(cls: type) -> tuple[tuple[str, str], ...]:
    """Per class, once: each field and whether it holds records (encoding hot path)."""
    plan = _WIRE_PLANS.get(cls)
    if plan is None:
        plan = _WIRE_PLANS[cls] = _make_wire_plan(cls)
    return plan


_WIRE_PLANS: dict[type, tuple[tuple[str, str], ...]] = {}


def _make_wire_plan(cls: type) -> tuple[tuple[str, str], ...]:
    hints = typing.get_type_hints(cls)
    plan = []
    for f in fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
        if is_dataclass(hint) or any(is_dataclass(a) for a in args if typing.get_origin(a) is None):
            inner_tuple = typing.get_origin(hint) is tuple
            plan.append((f.name, _RECORDS if inner_tuple else _RECORD))
        else:
            plan.append((f.name, _SCALAR))
    return tuple(plan)


def decode(data: bytes) -> Frame:
    """Parse one WebSocket message into a frame, or raise the documented error.

    The error's ``request_id`` is set by the one rule of SPEC §2.2.5
    (:func:`request_id_of`), whatever the error, so an ERROR's ``re`` depends on
    the message's bytes only, never on which check failed first.
    """
    try:
        return _decode(data)
    except ProtocolError as exc:
        exc.request_id = request_id_of(data)
        raise


def _decode(data: bytes) -> Frame:
    # SPEC §2.3: the message layer first (size, then msgpack), then `t`, then the fields.
    if len(data) > limits.MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame: at most {limits.MAX_FRAME_BYTES} bytes")
    obj = _unpack(data)
    if not isinstance(obj, dict):
        raise MalformedFrame("frame: must be a map")
    tag = obj.get(TYPE_KEY)
    if type(tag) is not int:
        raise MalformedFrame("t: must be an integer frame type")
    try:
        cls = FRAME_CLASSES[FrameType(tag)]
    except ValueError:
        raise UnknownFrameType(f"t: {tag} is not a frame type of this version") from None
    body = {k: v for k, v in obj.items() if k != TYPE_KEY}
    try:
        return typing.cast(Frame, _build(cls, body, "frame"))
    except ProtocolError:
        raise
    except Exception as exc:  # a validator bug must not escape as anything else
        raise MalformedFrame(f"invalid frame: {type(exc).__name__}") from None


# --- the id an ERROR echoes (SPEC §2.2.5) -------------------------------------
#
# "An ERROR answering a message carries `re` if and only if the message begins
# with one complete msgpack map in which exactly one key is the str `id` and
# its value is an int from 1 to 2^32−1" — whatever else is wrong with it. So
# this reader is deliberately lenient where the decoder is strict: it skips
# every value without building it (any type, extension types, invalid UTF-8,
# any depth, duplicate keys other than `id`) and ignores bytes after the map.
# It walks the bytes once with a counter instead of recursing, so hostile
# nesting costs no stack, and every step consumes at least one byte.

_ID_KEYS = frozenset(
    {b"\xa2id", b"\xd9\x02id", b"\xda\x00\x02id", b"\xdb\x00\x00\x00\x02id"}
)
"""The str ``id`` in each msgpack str encoding (a bin ``id`` is another key)."""

_FIXED_SIZE = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float 32, 64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # ints
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext: type byte + data
}  # fmt: skip
_SIZED = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),  # bin: length bytes
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),  # ext: length bytes, then a type byte
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),  # str
}  # fmt: skip
_COUNTED = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
"""Array and map headers: (length bytes, objects per element)."""
_ID_VALUE_MAX_BYTES = 9
"""The longest msgpack int (0xcf or 0xd3 and eight bytes)."""


def request_id_of(data: bytes) -> int | None:
    """The ``re`` an ERROR answering ``data`` carries, or None (SPEC §2.2.5)."""
    try:
        count, at = _map_header(data)
        id_value: bytes | None = None
        seen = 0
        for _ in range(count):  # a lying count ends at the end of the data (IndexError)
            key_end = _skip(data, at)
            value_end = _skip(data, key_end)
            if data[at:key_end] in _ID_KEYS:
                seen += 1
                id_value = data[key_end:value_end]
            at = value_end
    except (IndexError, ValueError):
        return None
    if seen != 1 or id_value is None or len(id_value) > _ID_VALUE_MAX_BYTES:
        return None
    value = msgpack.unpackb(id_value)
    if type(value) is int and 1 <= value <= MAX_REQUEST_ID:
        return value
    return None


def _map_header(data: bytes) -> tuple[int, int]:
    """(entries, offset of the first key) of the map ``data`` starts with."""
    head = data[0]
    if 0x80 <= head <= 0x8F:
        return head & 0x0F, 1
    if head in (0xDE, 0xDF):
        size = 2 if head == 0xDE else 4
        if len(data) < 1 + size:
            raise IndexError("truncated map header")
        return int.from_bytes(data[1 : 1 + size], "big"), 1 + size
    raise ValueError("not a map")


def _skip(data: bytes, at: int) -> int:
    """The offset just after the one complete msgpack object starting at ``at``."""
    pending = 1
    while pending:
        pending -= 1
        head = data[at]
        at += 1
        if head <= 0x7F or head >= 0xE0:  # positive and negative fixint
            continue
        if head <= 0x8F:  # fixmap
            pending += 2 * (head & 0x0F)
            continue
        if head <= 0x9F:  # fixarray
            pending += head & 0x0F
            continue
        if head <= 0xBF:  # fixstr
            at += head & 0x1F
            continue
        size = _FIXED_SIZE.get(head)
        if size is not None:
            at += size
            continue
        if head in _SIZED:
            length_bytes, extra = _SIZED[head]
            at += length_bytes + extra + int.from_bytes(data[at : at + length_bytes], "big")
        elif head in _COUNTED:
            length_bytes, per_element = _COUNTED[head]
            pending += per_element * int.from_bytes(data[at : at + length_bytes], "big")
            at += length_bytes
        else:  # 0xc1, never used by msgpack
            raise ValueError("not a msgpack object")
        if at > len(data):
            raise IndexError("object runs past the end of the message")
    if at > len(data):
        raise IndexError("object runs past the end of the message")
    return at


def _unpack(data: bytes) -> object:
    return strict_unpack(data)


def strict_unpack(
    data: bytes,
    *,
    max_len: int = limits.MAX_FRAME_BYTES,
    max_array_len: int = limits.MAX_FRAME_BYTES,
    max_map_len: int = MAX_MAP_KEYS,
) -> object:
    """One msgpack object under the rules of SPEC §2.3, before any schema.

    Exactly one object, no trailing bytes, str keys only, no duplicate keys, no
    extension types, valid UTF-8, nesting within the limit. Shared by every
    strict decoder (frames, signed objects, end-to-end content) so the rules
    live once. Raises :class:`MalformedFrame`.
    """
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            object_pairs_hook=_map_without_duplicates,
            ext_hook=_refuse_ext,
            timestamp=0,
            max_str_len=max_len,
            max_bin_len=max_len,
            max_array_len=max_array_len,
            max_map_len=max_map_len,
            max_ext_len=max_len,
        )
    except ProtocolError:
        raise
    except msgpack.ExtraData:
        raise MalformedFrame("trailing bytes after the object") from None
    except Exception as exc:  # any msgpack or UTF-8 failure is a malformed frame
        raise MalformedFrame(f"not a msgpack object: {type(exc).__name__}") from None
    _check_depth(obj)
    return obj


def _map_without_duplicates(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MalformedFrame("map: duplicate key")
    return result


def _refuse_ext(code: int, data: bytes) -> object:
    raise MalformedFrame(f"extension type {code} is not allowed")


def _check_depth(value: object, depth: int = 1) -> None:
    """Refuse containers nested deeper than the limit, and timestamps.

    msgpack turns the timestamp extension (−1) into a ``Timestamp`` instead of
    calling ``ext_hook``; refusing it here keeps it in the msgpack layer with
    every other extension (SPEC §2.3: that layer is checked before ``t``).
    Scalars cost one isinstance and one type comparison.
    """
    if isinstance(value, dict):
        children: typing.Iterable[object] = value.values()
    elif isinstance(value, tuple):
        children = value
    else:
        if type(value) is msgpack.Timestamp:
            raise MalformedFrame("extension type -1 is not allowed")
        return
    if depth > limits.MAX_NESTING_DEPTH:
        raise MalformedFrame(f"nesting deeper than {limits.MAX_NESTING_DEPTH}")
    for child in children:
        if isinstance(child, dict | tuple):
            _check_depth(child, depth + 1)
        elif type(child) is msgpack.Timestamp:
            raise MalformedFrame("extension type -1 is not allowed")


# --- annotation-driven conversion -------------------------------------------


def _build(cls: type, body: dict[str, object], where: str) -> object:
    spec = _spec(cls)
    converters = spec.converters
    kwargs = {}
    for name, value in body.items():
        convert = converters.get(name)
        if convert is None:
            raise MalformedFrame(f"{where}: unknown key {name!r}")
        kwargs[name] = convert(value, name)
    if not spec.required <= kwargs.keys():
        missing = sorted(spec.required - kwargs.keys())[0]
        raise MalformedFrame(f"{where}: missing key {missing!r}")
    return cls(**kwargs)


def _spec(cls: type) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = _Spec(cls)
    return spec


_SPECS: dict[type, _Spec] = {}


class _Spec:
    __slots__ = ("converters", "required")

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        self.converters: dict[str, Converter] = {
            f.name: _converter(hints[f.name]) for f in fields(cls)
        }
        self.required = required_field_names(cls)


def _exact(expected: type) -> Converter:
    def convert(value: object, name: str) -> object:
        if type(value) is not expected:
            raise MalformedFrame(f"{name}: must be {_WIRE_NAMES[expected]}")
        return value

    return convert


_WIRE_NAMES: dict[type, str] = {int: "an integer", bool: "a boolean", str: "a string", bytes: "bin"}


def _converter(hint: object) -> Converter:
    if isinstance(hint, type) and hint in _WIRE_NAMES:
        return _exact(hint)
    if isinstance(hint, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        (inner,) = args  # only `X | None` unions exist in frames
        convert_inner = _converter(inner)

        def optional(value: object, name: str) -> object:
            if value is None:
                raise MalformedFrame(f"{name}: nil is not allowed; omit the key instead")
            return convert_inner(value, name)

        return optional
    if typing.get_origin(hint) is tuple:
        item_hint, _ellipsis = typing.get_args(hint)
        convert_item = _converter(item_hint)
        scalar = item_hint if item_hint in _WIRE_NAMES else None

        def sequence(value: object, name: str) -> object:
            if type(value) is not tuple:
                raise MalformedFrame(f"{name}: must be an array")
            if scalar is not None:  # arrays of scalars (ACK ids) are hot: no per-item call
                for item in value:
                    if type(item) is not scalar:
                        raise MalformedFrame(f"{name}: must be {_WIRE_NAMES[scalar]}")
                return value
            return tuple(convert_item(item, name) for item in value)

        return sequence
    if isinstance(hint, type) and is_dataclass(hint):
        record_cls: type = hint

        def record(value: object, name: str) -> object:
            if type(value) is not dict:
                raise MalformedFrame(f"{name}: must be a map")
            return _build(record_cls, value, name)

        return record
    raise TypeError(f"frame field type {hint!r} has no wire form")  # pragma: no cover


for _cls in (*FRAME_CLASSES.values(), *RECORD_TYPES):  # fail at import, not on first use
    _spec(_cls)
