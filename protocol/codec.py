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
# "An ERROR answering a binary message MUST carry `re` if and only if the
# message begins with one complete msgpack map of at most 16 entries, each key
# and value nesting at most 1024 containers, in which exactly one key is the
# str `id` and that key's value is an int from 1 to 2^32−1" — whatever else is
# wrong with it. So this reader is lenient where the decoder is strict: it
# skips every key and value without building it (any type, any extension,
# invalid UTF-8, duplicate keys other than `id`) and ignores bytes after the
# map. msgpack's C ``skip`` does the walking, so a hostile message costs about
# what decoding it costs; its stack of 1024 containers is the depth bound, and
# the entry bound keeps the Python loop to at most 16 turns.

ID_MAP_MAX_ENTRIES = MAX_MAP_KEYS
"""Largest map an ``id`` is read from: no frame has more fields (SPEC §2.2.5)."""
ID_MAX_NESTING = 1024
"""Containers a key or value may nest for its map's ``id`` to be read: msgpack's
own stack, far beyond the 4 levels a frame may have (SPEC §2.2.5)."""

_ID_KEYS = frozenset(
    {b"\xa2id", b"\xd9\x02id", b"\xda\x00\x02id", b"\xdb\x00\x00\x00\x02id"}
)
"""The str ``id`` in each msgpack str encoding (a bin ``id`` is another key)."""
_INT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
"""Bytes after the head of msgpack's uint 8 … 64 and int 8 … 64."""


def request_id_of(data: bytes) -> int | None:
    """The ``re`` an ERROR answering ``data`` carries, or None (SPEC §2.2.5)."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    id_value: bytes | None = None
    seen = 0
    try:
        count = unpacker.read_map_header()
        if count > ID_MAP_MAX_ENTRIES:
            return None
        for _ in range(count):
            start = unpacker.tell()
            unpacker.skip()
            key_end = unpacker.tell()
            unpacker.skip()  # StackError past ID_MAX_NESTING containers
            if data[start:key_end] in _ID_KEYS:
                seen += 1
                id_value = data[key_end : unpacker.tell()]
    except Exception:  # not a map, incomplete, 0xc1, too deep: no complete map to read
        return None
    if seen != 1 or id_value is None or not _is_msgpack_int(id_value):
        return None
    value = msgpack.unpackb(id_value)  # an int: decoding it cannot fail
    if 1 <= value <= MAX_REQUEST_ID:
        return typing.cast(int, value)
    return None


def _is_msgpack_int(encoded: bytes) -> bool:
    """Whether ``encoded`` is one msgpack int (checked on the head byte before decoding,
    so that a str that is not UTF-8, say, never reaches a decoder that would raise)."""
    head = encoded[0]
    if head <= 0x7F or head >= 0xE0:  # positive and negative fixint
        return len(encoded) == 1
    size = _INT_SIZES.get(head)
    return size is not None and len(encoded) == 1 + size


def _unpack(data: bytes) -> object:
    return strict_unpack(data)


def strict_unpack(
    data: bytes,
    *,
    max_len: int = limits.MAX_FRAME_BYTES,
    max_array_len: int = limits.MAX_ARRAY_ITEMS,
    max_map_len: int = MAX_MAP_KEYS,
) -> object:
    """One msgpack object under the rules of SPEC §2.3, before any schema.

    Exactly one object, no trailing bytes, str keys only, no duplicate keys, no
    extension types, valid UTF-8, nesting within the limit. Shared by every
    strict decoder (frames, signed objects, end-to-end content) so the rules
    live once. Raises :class:`MalformedFrame`, or :class:`FrameTooLarge` for an
    array over ``max_array_len`` (SPEC §2.3).

    What it costs is bounded by what a frame may hold, not by the message's
    size: the nesting is checked from the containers' headers before anything
    is built (:func:`_check_nesting`), and ``max_ext_len=0`` makes msgpack refuse
    every extension, the timestamp (−1) included, from its header — so the only
    Python that runs per value is the duplicate-key hook, once per map, and
    three levels hold at most a few thousand maps.
    """
    _check_nesting(data)
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
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except msgpack.ExtraData:
        raise MalformedFrame("trailing bytes after the object") from None
    except ValueError as exc:
        # msgpack names the bound it hit; an array over every type's maximum is
        # "longer than its type allows" (SPEC §2.3: 101), any other bound is 100.
        # tests/protocol/test_codec.py pins this message of msgpack's.
        if "max_array_len" in str(exc):
            raise FrameTooLarge(f"array: at most {max_array_len} values") from None
        if "max_ext_len" in str(exc) or "timestamp" in str(exc):
            raise MalformedFrame("extension types are not allowed") from None
        raise MalformedFrame(f"not a msgpack object: {type(exc).__name__}") from None
    except Exception as exc:  # any msgpack or UTF-8 failure is a malformed frame
        raise MalformedFrame(f"not a msgpack object: {type(exc).__name__}") from None
    return obj


def _map_without_duplicates(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MalformedFrame("map: duplicate key")
    for key in result:  # strict_map_key lets bin keys through as well as str
        if type(key) is not str:
            raise MalformedFrame("map: a key is not a str")
    return result


def _refuse_ext(code: int, data: bytes) -> object:
    raise MalformedFrame(f"extension type {code} is not allowed")


MSGPACK_STACK_DEPTH = 1024
"""Containers msgpack's C unpacker holds open at once; one more raises StackError (the
same stack bounds the ``id`` reading of SPEC §2.2.5). Checked at import."""

_NESTING_PREFIX = b"\x91" * (MSGPACK_STACK_DEPTH - limits.MAX_NESTING_DEPTH)
"""Arrays of one element that take all of msgpack's stack but ``MAX_NESTING_DEPTH``."""


def _check_nesting(data: bytes) -> None:
    """Refuse containers nested deeper than ``MAX_NESTING_DEPTH`` (SPEC §2.3 rule 8)
    from their headers alone, before any value is built.

    Why this way: a walk of the decoded object ran Python per container, and a
    message of 65,000 one-byte containers took ~30 ms to refuse. Here msgpack's C
    ``skip`` walks the message inside :data:`_NESTING_PREFIX`, so its own stack
    overflows exactly when the message nests deeper than the limit. Any other fault
    is left to the decoder, which names it.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=len(_NESTING_PREFIX) + len(data))
    unpacker.feed(_NESTING_PREFIX)
    unpacker.feed(data)
    try:
        unpacker.skip()
    except msgpack.StackError:
        raise MalformedFrame(f"nesting deeper than {limits.MAX_NESTING_DEPTH}") from None
    except Exception:  # truncated, a bad byte …: the decoder's to report
        return


def _stack_is_as_assumed() -> bool:
    """Whether msgpack's stack is :data:`MSGPACK_STACK_DEPTH` deep (the nesting check
    above would be wrong otherwise)."""

    def skips(depth: int) -> bool:
        unpacker = msgpack.Unpacker()
        unpacker.feed(b"\x91" * (depth - 1) + b"\x90")
        try:
            unpacker.skip()
        except msgpack.StackError:
            return False
        return True

    return skips(MSGPACK_STACK_DEPTH) and not skips(MSGPACK_STACK_DEPTH + 1)


if not _stack_is_as_assumed():  # pragma: no cover - a msgpack that changed its stack
    raise ImportError(f"msgpack's unpacker stack is not {MSGPACK_STACK_DEPTH} deep")


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
