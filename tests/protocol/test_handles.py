"""SPEC §3.2: the handle grammar and confusable skeletons (issue 13, item 9)."""

from __future__ import annotations

import pytest
from hypothesis import given

from blindrelay.protocol.errors import FrameTooLarge, MalformedFrame
from blindrelay.protocol.frames import check_handle
from blindrelay.protocol.skeleton import CONFUSABLES, leading_skeletons, skeleton

from .strategies import handles


@pytest.mark.parametrize(
    "handle",
    ["airline.", "airline-", "airline_", "air..line", "air.-line", "air__line", "a-.b", "ab--"],
)
def test_a_handle_may_not_end_in_or_repeat_punctuation(handle: str) -> None:
    """SPEC §3.2: "no punctuation character at the end and never two in a row"."""
    with pytest.raises(MalformedFrame):
        check_handle(handle)


@pytest.mark.parametrize("handle", ["airline\n", "air.line\n", "abc\r\n", "\nabc"])
def test_a_handle_has_no_line_break_before_or_after_it(handle: str) -> None:
    """SPEC §3.2: the whole value matches the grammar — "airline\\n" is a lookalike of
    airline (and a line break in every log that names it), not a handle. A pattern
    anchored with `$` rather than `\\Z` lets the trailing newline through."""
    with pytest.raises(MalformedFrame):
        check_handle(handle)


@pytest.mark.parametrize("handle", ["airline", "air.line", "a-b", "sky_ways.air", "123", "a.b.c.d"])
def test_labels_joined_by_single_punctuation_are_handles(handle: str) -> None:
    check_handle(handle)


@pytest.mark.parametrize("handle", [".ab", "-ab", "ab", "a" * 33, "Abc", "a b", "ab+c"])
def test_the_old_rules_still_hold(handle: str) -> None:
    """Longer than 32 is FrameTooLarge (101), everything else MalformedFrame (SPEC §2.3)."""
    expected = FrameTooLarge if len(handle) > 32 else MalformedFrame
    with pytest.raises(expected):
        check_handle(handle)


@given(handles)
def test_the_strategy_only_draws_valid_handles(handle: str) -> None:
    check_handle(handle)


@pytest.mark.parametrize(
    "lookalike",
    ["air1ine", "airiine", "a1r1ine", "air.line", "air-line", "air_line", "ai.r-l_ine"],
)
def test_lookalikes_of_a_handle_have_its_skeleton(lookalike: str) -> None:
    assert skeleton(lookalike) == skeleton("airline")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("g00gle", "google"),
        ("rnicrosoft", "microsoft"),
        ("vvalmart", "walmart"),
        ("clisney", "disney"),
        ("paypa1", "paypal"),
        ("arnazon", "amazon"),
        ("vvv", "wv"),
        ("vvv", "vw"),
    ],
)
def test_the_documented_confusables_collide(one: str, other: str) -> None:
    assert skeleton(one) == skeleton(other)


@pytest.mark.parametrize(("one", "other"), [("airline", "airlines"), ("bank", "bonk"), ("abc", "abd")])
def test_different_looking_handles_keep_different_skeletons(one: str, other: str) -> None:
    assert skeleton(one) != skeleton(other)


def test_the_confusables_map_only_maps_handle_letters_to_handle_letters() -> None:
    alphabet = set("abcdefghijklmnopqrstuvwxyz0123456789")
    for source, target in CONFUSABLES.items():
        assert source in alphabet and set(target) <= alphabet - set(CONFUSABLES), (source, target)


@given(handles)
def test_a_skeleton_is_a_fixed_point(handle: str) -> None:
    """Mapping a skeleton again changes nothing: equal skeletons are an equivalence."""
    once = skeleton(handle)
    assert skeleton(once) == once
    assert set(once).isdisjoint(".-_")


def test_leading_skeletons_are_the_runs_of_whole_labels_from_the_start() -> None:
    assert leading_skeletons("airline") == ("alrllne",)
    assert leading_skeletons("air1ine.com") == ("alrllne", "alrllnecorn")
    assert leading_skeletons("air.france-help") == ("alr", "alrfrance", "alrfrancehelp")


@given(handles)
def test_the_whole_handle_is_the_last_leading_skeleton(handle: str) -> None:
    runs = leading_skeletons(handle)
    assert runs[-1] == skeleton(handle)
    assert len(runs) == handle.count(".") + handle.count("-") + handle.count("_") + 1

