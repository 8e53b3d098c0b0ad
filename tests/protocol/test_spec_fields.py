"""SPEC field tables and the code agree on every field's wire type and range (SPEC §2.5).

Every ``| NAME field | type | meaning |`` table of SPEC.md is parsed with the notation
of §2.5 and compared with the dataclass it describes: the same fields in the same
order, the same optional ones, the same wire types. Then every bound of every frame
field is probed through the real codec: the bound decodes, one beyond it is refused,
with 101 exactly when a str, bin or array is longer than its maximum and 100
otherwise (SPEC §2.3). Fields of signed objects are probed the same way through
their strict decoder, where any refusal is right (it becomes 500 or 600).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from blindrelay.protocol import codec, limits
from blindrelay.protocol import frames as f
from blindrelay.protocol.business import Badge, BusinessProfile, OpeningHours, SpecialDay
from blindrelay.protocol.errors import ErrorCode, ProtocolError
from blindrelay.protocol.signed import ConsentStatement, SignedObject
from blindrelay.protocol.transparency import entries as log
from blindrelay.protocol.transparency.treehead import TreeHead

from .spec import SPEC

ROOT = Path(__file__).resolve().parents[2]

RECORDS: dict[str, type] = {
    "SignedPreKey": f.SignedPreKeyRecord,
    "OneTimePreKey": f.OneTimePreKeyRecord,
    "UsageCount": f.UsageCount,
    "ProofOfWork": f.ProofOfWork,
    "LogProof": f.LogProof,
}
SIGNED: dict[str, type] = {
    "statement": ConsentStatement,
    "badge": Badge,
    "profile": BusinessProfile,
    "OpeningHours": OpeningHours,
    "SpecialDay": SpecialDay,
    "signed object": SignedObject,
    "tree head": TreeHead,
    "key binding": log.KeyBinding,
    "badge issued": log.BadgeIssued,
    "badge revoked": log.BadgeRevoked,
    "statement logged": log.StatementLogged,
    "bill logged": log.BillLogged,
    "bill item": log.BillItem,
}
"""Signed objects and their records, and the transparency log's entries (§15), which are
decoded as strictly."""
FRAMES: dict[str, type] = {t.name: cls for t, cls in f.FRAME_CLASSES.items()}
RECORD_NAMES = {cls: name for name, cls in {**RECORDS, **SIGNED}.items()}


# --- the notation of SPEC §2.5 --------------------------------------------------------


@dataclass(frozen=True)
class WireType:
    kind: str  # int, bool, str, bin, array, record
    low: int | None = None
    high: int | None = None
    fmt: str = ""
    item: WireType | None = None
    record: str = ""


def _bound(text: str) -> int:
    text = text.strip("`")
    if match := re.fullmatch(r"2\^(\d+)(-1)?", text):
        return int(2 ** int(match[1]) - (1 if match[2] else 0))
    if text.isdigit():
        return int(text)
    value = getattr(limits, text)
    assert isinstance(value, int), text
    return value


def parse_type(text: str) -> WireType:
    text = text.strip().replace("−", "-")
    if match := re.fullmatch(r"array (\S+) … (\S+) of (.+)", text):
        return WireType("array", _bound(match[1]), _bound(match[2]), item=parse_type(match[3]))
    if text == "bool":
        return WireType("bool")
    if match := re.fullmatch(r"(int|str|bin)(?: ([^,\s]+)(?: … ([^,\s]+))?)?(?:, (.+))?", text):
        kind, low, high, fmt = match.groups()
        lo = _bound(low) if low else None
        return WireType(kind, lo, _bound(high) if high else lo, fmt or "")
    if re.fullmatch(r"[A-Z][A-Za-z]+", text):
        return WireType("record", record=text)
    raise ValueError(f"not in the notation of SPEC §2.5: {text!r}")


def field_tables() -> dict[str, list[tuple[str, bool, str]]]:
    """NAME → [(field, optional, type text)] for every ``| NAME field | type |`` table."""
    tables: dict[str, list[tuple[str, bool, str]]] = {}
    current: list[tuple[str, bool, str]] | None = None
    for line in SPEC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            current = None
        elif len(cells) > 2 and cells[0].endswith(" field") and cells[1] == "type":
            name = cells[0].removesuffix(" field")
            assert name not in tables, f"two tables for {name}"
            current = tables[name] = []
        elif current is not None and not set(cells[0]) <= {"-"}:
            current.append((cells[0].rstrip("?"), cells[0].endswith("?"), cells[1]))
    return tables


TABLES = field_tables()


def _wire_kind(hint: object) -> WireType:
    if hint in (int, bool, str):
        return WireType(hint.__name__)  # type: ignore[union-attr]
    if hint is bytes:
        return WireType("bin")
    if typing.get_origin(hint) is tuple:
        return WireType("array", item=_wire_kind(typing.get_args(hint)[0]))
    if isinstance(hint, type) and is_dataclass(hint):
        return WireType("record", record=RECORD_NAMES[hint])
    raise AssertionError(f"no wire kind for {hint!r}")


def _same_kind(documented: WireType, actual: WireType) -> bool:
    if documented.kind != actual.kind or documented.record != actual.record:
        return False
    if documented.item is None or actual.item is None:
        return documented.item is actual.item
    return _same_kind(documented.item, actual.item)


def test_every_frame_record_and_signed_object_has_exactly_one_field_table() -> None:
    assert set(TABLES) == {*FRAMES, *RECORDS, *SIGNED}


@pytest.mark.parametrize("name", sorted({*FRAMES, *RECORDS, *SIGNED}))
def test_field_table_lists_the_fields_in_order_with_their_wire_types(name: str) -> None:
    cls = {**FRAMES, **RECORDS, **SIGNED}[name]
    hints = typing.get_type_hints(cls)
    documented = [(field, optional, parse_type(text)) for field, optional, text in TABLES[name]]
    assert [d[0] for d in documented] == [fld.name for fld in fields(cls)]
    for field, optional, wire in documented:
        args = [a for a in typing.get_args(hints[field]) if a is not type(None)]
        is_optional = typing.get_origin(hints[field]) is not tuple and type(None) in typing.get_args(
            hints[field]
        )
        assert optional == is_optional, f"{name}.{field}: optional mark"
        hint = args[0] if is_optional else hints[field]
        assert _same_kind(wire, _wire_kind(hint)), f"{name}.{field}: {wire} vs {hint}"


# --- probing every bound ----------------------------------------------------------------


def _examples() -> list[f.Frame]:
    spec = importlib.util.spec_from_file_location(
        "generate", ROOT / "protocol" / "vectors" / "generate.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.valid_frames().values())


EXAMPLES = [(frame.TYPE.name, msgpack.unpackb(codec.encode(frame))) for frame in _examples()]
Path_ = tuple[str | int, ...]


def _leaves(table: str, prefix: Path_ = ()) -> list[tuple[Path_, WireType]]:
    """Every field path of a table, descending into records and array items."""
    out: list[tuple[Path_, WireType]] = []
    for field, _, text in TABLES[table]:
        wire = parse_type(text)
        out += _descend((*prefix, field), wire)
    return out


def _descend(path: Path_, wire: WireType) -> list[tuple[Path_, WireType]]:
    out = [(path, wire)]
    inner = wire.item if wire.kind == "array" else wire
    if inner is not None and inner.kind == "record":
        out += _leaves(inner.record, (*path, 0) if wire.kind == "array" else path)
    elif wire.kind == "array" and inner is not None:
        out += _descend((*path, 0), inner)
    return out


def _get(obj: Any, path: Path_) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def _has(obj: Any, path: Path_) -> bool:
    try:
        _get(obj, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _with(base: Any, path: Path_, value: object) -> Any:
    out = copy.deepcopy(base)
    _get(out, path[:-1])[path[-1]] = value
    return out


def _items(example: list[Any], count: int) -> list[Any]:
    """``count`` array elements modelled on the example's first, distinct where it matters."""
    first = example[0]
    if isinstance(first, dict) and "key_id" in first:
        return [{**first, "key_id": i} for i in range(count)]
    if isinstance(first, dict) and "date" in first:
        return [{**first, "date": f"2027-{1 + i // 28:02d}-{1 + i % 28:02d}"} for i in range(count)]
    if isinstance(first, str) and first in limits.CATEGORIES:
        return [limits.CATEGORIES[i % len(limits.CATEGORIES)] for i in range(count)]
    return [first] * count


MALFORMED, TOO_LARGE = ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE


def _cases(base: Any, path: Path_, wire: WireType) -> list[tuple[str, object, ErrorCode | None]]:
    """(what, value, expected code or None for accepted) at the bounds of ``wire``."""
    cases: list[tuple[str, object, ErrorCode | None]] = []
    if wire.kind == "int" and wire.low is not None and wire.high is not None:
        cases += [("low", wire.low, None), ("high", wire.high, None)]
        if wire.low - 1 >= -(2**63):
            cases.append(("below", wire.low - 1, MALFORMED))
        if wire.high + 1 < 2**64:
            cases.append(("above", wire.high + 1, MALFORMED))
    elif wire.kind in ("str", "bin", "array") and wire.low is not None and wire.high is not None:

        def make(n: int) -> object:
            if wire.kind == "str":
                return "a" * n
            if wire.kind == "bin":
                return b"\x01" * n
            return _items(_get(base, path), n)

        cases += [("shortest", make(wire.low), None), ("longest", make(wire.high), None)]
        cases.append(("too long", make(wire.high + 1), TOO_LARGE))
        if wire.low > 0:
            cases.append(("too short", make(wire.low - 1), MALFORMED))
    if wire.kind == "str" and wire.fmt:  # an enumeration, a pattern, §3.2, a zone name
        cases.append(("not the format", "ZZ not listed", MALFORMED))
    elif wire.kind == "bool":
        cases += [("true", True, None), ("false", False, None), ("int for bool", 1, MALFORMED)]
    elif wire.kind == "record":
        cases.append(("array for record", [], MALFORMED))
    return cases


FRAME_HIGHS_OUT_OF_REACH = {
    ("HELLO", "pow", "bits"), ("HELLO", "pow", "opslimit"), ("HELLO", "pow", "memlimit"),
}  # fmt: skip
"""Field maxima a joint rule keeps out of reach: the three proof-of-work parameters
together cost at most POW_MAX_EXPECTED_SOLVE_MS (SPEC §2.4, §4.6.3; tested in
test_pow). Their other bounds are probed."""


def _frame_probes() -> list[tuple[str, str, Path_, str, object, ErrorCode | None]]:
    probes = []
    for name in FRAMES:
        for path, wire in _leaves(name):
            base = next((ex for n, ex in EXAMPLES if n == name and _has(ex, path)), None)
            assert base is not None, f"no valid vector of {name} has {path}: add one"
            for what, value, expected in _cases(base, path, wire):
                if what == "high" and (name, *path) in FRAME_HIGHS_OUT_OF_REACH:
                    continue
                probes.append((name, base, path, what, value, expected))
    return probes


FRAME_PROBES = _frame_probes()


@pytest.mark.parametrize(
    ("name", "base", "path", "what", "value", "expected"),
    FRAME_PROBES,
    ids=[f"{p[0]}.{'.'.join(map(str, p[2]))}:{p[3]}" for p in FRAME_PROBES],
)
def test_every_bound_of_every_frame_field_is_where_the_spec_says(
    name: str, base: Any, path: Path_, what: str, value: object, expected: ErrorCode | None
) -> None:
    data = msgpack.packb(_with(base, path, value), use_bin_type=True)
    if expected is None:
        assert codec.decode(data).TYPE.name == name
    else:
        with pytest.raises(ProtocolError) as refused:
            codec.decode(data)
        assert refused.value.code is expected, refused.value


def test_the_probes_reach_every_frame_field() -> None:
    probed = {(p[0], p[2]) for p in FRAME_PROBES}
    for name in FRAMES:
        for fld in fields(FRAMES[name]):
            assert any(n == name and path[0] == fld.name for n, path in probed), (name, fld.name)


# --- signed objects: the same bounds through their strict decoder ------------------------

K32 = bytes(range(32))
T0 = 1_790_000_000_000
SIGNED_EXAMPLES: dict[str, object] = {
    "statement": ConsentStatement(
        v=1, action="grant", signer="alice", signer_key=K32, target="skyways", issued_at=T0,
        nonce=bytes(16), relay_key=K32, categories=("utility",),
    ),
    "badge": Badge(
        v=1, handle="skyways", key_fingerprint=K32, display_name="Skyways", serial=7,
        issued_at=T0, expires_at=T0 + 1000,
    ),
    "profile": BusinessProfile(
        v=1, handle="skyways", display_name="Skyways", description="Flights.",
        timezone="Europe/Berlin", hours=(OpeningHours(0, 540, 1020),),
        exceptions=(SpecialDay("2027-01-01", 0, 0),), issued_at=T0,
    ),
    "tree head": TreeHead(v=1, size=5, root=K32, timestamp=T0),
    "key binding": log.KeyBinding(
        v=1, handle="skyways", kind="business", identity_key=bytes(32), at=T0, previous_key=K32,
    ),
    "badge issued": log.BadgeIssued(v=1, handle="skyways", serial=7, badge=b"b" * 40, at=T0),
    "badge revoked": log.BadgeRevoked(v=1, handle="skyways", serial=7, at=T0),
    "statement logged": log.StatementLogged(v=1, commitment=K32, at=T0),
    "bill logged": log.BillLogged(
        v=1, handle="skyways", month="2027-01", count=3, root=K32, at=T0,
    ),
    "bill item": log.BillItem(v=1, msg_id=bytes(16), category="utility", at=T0, recipient=K32),
}  # fmt: skip
INTERDEPENDENT = {
    ("badge", "issued_at"), ("badge", "expires_at"),  # issued_at < expires_at <= + validity
    ("profile", "hours", 0, "open"), ("profile", "hours", 0, "close"),  # open < close
    ("profile", "exceptions", 0, "open"), ("profile", "exceptions", 0, "close"),
    ("tree head", "size"),  # size 0 only with the empty tree's root (SPEC §15.3)
}  # fmt: skip
"""Bounds a single field cannot reach alone; their pairing rule is tested in test_business."""


def _signed_probes() -> list[tuple[str, Any, Path_, str, object, bool]]:
    probes = []
    for name, example in SIGNED_EXAMPLES.items():
        base = msgpack.unpackb(codec.encode_object(example))
        for path, wire in _leaves(name):
            if (name, *path) in INTERDEPENDENT:
                continue
            for what, value, expected in _cases(base, path, wire):
                probes.append((name, base, path, what, value, expected is None))
    return probes


SIGNED_PROBES = _signed_probes()


@pytest.mark.parametrize(
    ("name", "base", "path", "what", "value", "accepted"),
    SIGNED_PROBES,
    ids=[f"{p[0]}.{'.'.join(map(str, p[2]))}:{p[3]}" for p in SIGNED_PROBES],
)
def test_every_bound_of_every_signed_object_field_is_where_the_spec_says(
    name: str, base: Any, path: Path_, what: str, value: object, accepted: bool
) -> None:
    cls = SIGNED[name]
    data = msgpack.packb(_with(base, path, value), use_bin_type=True)
    if accepted:
        assert isinstance(codec.decode_object(cls, data, max_bytes=2**20), cls)
    else:
        with pytest.raises(ProtocolError):
            codec.decode_object(cls, data, max_bytes=2**20)


def test_every_profile_field_is_required() -> None:
    """SPEC §8.2: "Every profile field is required"."""
    base = msgpack.unpackb(codec.encode_object(SIGNED_EXAMPLES["profile"]))
    for key in base:
        data = msgpack.packb({k: v for k, v in base.items() if k != key}, use_bin_type=True)
        with pytest.raises(ProtocolError):
            codec.decode_object(BusinessProfile, data, max_bytes=2**20)


def test_a_display_name_of_only_white_space_is_refused() -> None:
    """SPEC §8.1, §8.2: display_name is "not only white space"."""
    for name in ("badge", "profile"):
        base = msgpack.unpackb(codec.encode_object(SIGNED_EXAMPLES[name]))
        data = msgpack.packb({**base, "display_name": " \t\u00a0"}, use_bin_type=True)
        with pytest.raises(ProtocolError):
            codec.decode_object(SIGNED[name], data, max_bytes=2**20)
