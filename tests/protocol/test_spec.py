"""SPEC.md and the code say the same thing: error table, limits table, frame table."""

from __future__ import annotations

from blindrelay.protocol import frames as f
from blindrelay.protocol import limits
from blindrelay.protocol.errors import ERRORS_BY_CODE, ErrorCode

from .spec import section, table_rows


def test_error_table_equals_error_code_enum() -> None:
    rows = table_rows(section(9), "code")
    documented = {(int(r[0]), r[1], r[3] == "yes") for r in rows}
    actual = {(int(c), c.name, c.closes_connection) for c in ErrorCode}
    assert documented == actual


def test_every_error_code_has_an_exception_class() -> None:
    assert set(ERRORS_BY_CODE) == set(ErrorCode)


def test_limits_table_equals_limits_module() -> None:
    rows = table_rows(section(10), "name")
    documented = {r[0]: float(r[1]) for r in rows}
    actual = {
        name: float(value)
        for name, value in vars(limits).items()
        if name.isupper() and isinstance(value, int | float) and not isinstance(value, bool)
    }
    assert documented == actual


def test_frame_table_equals_frame_classes() -> None:
    rows = table_rows(section(2), "t")
    documented = {int(r[0]): (r[1], r[3]) for r in rows}
    assert {t: name for t, (name, _) in documented.items()} == {int(t): t.name for t in f.FrameType}
    for tag, (_, kind) in documented.items():
        frame_type = f.FrameType(tag)
        if kind == "request":
            assert frame_type in f.REQUEST_FRAMES
        else:
            assert frame_type not in f.REQUEST_FRAMES


def test_frame_table_lists_each_frames_fields_in_wire_order() -> None:
    rows = table_rows(section(2), "t")
    for row in rows:
        cls = f.FRAME_CLASSES[f.FrameType(int(row[0]))]
        listed = [name.strip().rstrip("?") for name in row[4].split("(")[0].split(",")]
        assert listed == list(f.field_names(cls)), cls.__name__


def test_categories_in_spec_are_the_protocol_categories() -> None:
    rows = table_rows(section(7), "category")
    assert tuple(r[0].strip("`") for r in rows) == limits.CATEGORIES
