"""server/metering.py: the month a count goes to (SPEC §8.4: UTC calendar months)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blindrelay.server.metering import month_of, month_span

times = st.integers(min_value=0, max_value=2**47)  # to the year 6429


@given(times)
def test_a_month_span_holds_its_time_and_is_exactly_one_utc_month(ms: int) -> None:
    start, end, month = month_span(ms)
    assert start <= ms < end
    assert month == month_of(ms) == month_of(start) == month_of(end - 1)
    assert month_of(start - 1) != month and month_of(end) != month


def test_month_spans_across_the_year_end() -> None:
    new_year_2024 = 1_704_067_200_000
    assert month_span(new_year_2024 - 1) == (1_701_388_800_000, new_year_2024, "2023-12")
    assert month_span(new_year_2024)[2] == "2024-01"
