"""SPEC §8: badges check offline, profiles cannot be altered, hours follow the business's clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from nacl.signing import SigningKey

from blindrelay.protocol import limits
from blindrelay.protocol.business import (
    BadgeStatus,
    BusinessProfile,
    OpeningHours,
    SpecialDay,
    away_period,
    check_badge,
    is_open,
    issue_badge,
    open_profile,
)
from blindrelay.protocol.errors import InvalidProfile, MalformedFrame

OPERATOR = SigningKey(b"\x01" * 32)
OTHER = SigningKey(b"\x02" * 32)
AIRLINE = SigningKey(b"\x03" * 32)
AIRLINE_KEY = AIRLINE.verify_key.encode()
NOW = 1_800_000_000_000
DAY = 86_400_000
BERLIN = ZoneInfo("Europe/Berlin")


def sign_with(key: SigningKey):
    return lambda message: key.sign(message).signature


def badge(*, key: SigningKey = OPERATOR, handle: str = "skyways", identity: bytes = AIRLINE_KEY, validity: int = 30 * DAY) -> bytes:
    return issue_badge(sign_with(key), handle=handle, identity_key=identity, display_name="Skyways Airlines", serial=7, now_ms=NOW, validity_ms=validity)


def check(data: bytes | None, *, now: int = NOW + 1, handle: str = "skyways", identity: bytes = AIRLINE_KEY):
    return check_badge(data, operator_key=OPERATOR.verify_key.encode(), handle=handle, identity_key=identity, now_ms=now)


def test_badge_issued_by_the_operator_verifies_offline() -> None:
    result = check(badge())
    assert result.verified and result.display_name == "Skyways Airlines"


@pytest.mark.parametrize(
    ("data", "kwargs", "status"),
    [
        (None, {}, BadgeStatus.ABSENT),
        ("other_operator", {}, BadgeStatus.BAD_SIGNATURE),
        ("self_signed", {}, BadgeStatus.BAD_SIGNATURE),
        ("good", {"handle": "skyways-air"}, BadgeStatus.WRONG_HANDLE),
        ("good", {"identity": OTHER.verify_key.encode()}, BadgeStatus.WRONG_KEY),
        ("good", {"now": NOW - 1}, BadgeStatus.NOT_YET_VALID),
        ("good", {"now": NOW + 30 * DAY}, BadgeStatus.EXPIRED),
    ],
)
def test_anything_but_a_good_badge_shows_unverified(data: str | None, kwargs: dict, status: BadgeStatus) -> None:
    made = {None: None, "good": badge(), "other_operator": badge(key=OTHER), "self_signed": badge(key=AIRLINE)}[data]
    result = check(made, **kwargs)
    assert result.status is status and not result.verified and result.display_name is None


def test_altering_any_byte_of_a_badge_unverifies_it() -> None:
    data = badge()
    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] ^= 0x20
        assert not check(bytes(altered)).verified


def test_badge_validity_is_capped() -> None:
    with pytest.raises(MalformedFrame):
        badge(validity=limits.MAX_BADGE_VALIDITY_MS + 1)


WEEKDAYS_9_TO_17 = tuple(OpeningHours(day, 9 * 60, 17 * 60) for day in range(5))


def profile(hours=WEEKDAYS_9_TO_17, exceptions=(), tz: str = "Europe/Berlin") -> BusinessProfile:
    return BusinessProfile(v=1, handle="skyways", display_name="Skyways Airlines", description="Flights", timezone=tz, hours=tuple(hours), exceptions=tuple(exceptions), issued_at=NOW)


def at(year: int, month: int, day: int, hour: int, minute: int = 0, tz: ZoneInfo = BERLIN) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp() * 1000)


def test_signed_profile_opens_with_the_business_key() -> None:
    data = profile().sign(sign_with(AIRLINE))
    assert open_profile(data, AIRLINE_KEY, "skyways") == profile()


def test_tampered_or_foreign_profile_is_refused() -> None:
    data = profile().sign(sign_with(AIRLINE))
    tampered = data.replace(b"Flights", b"Flighty")
    with pytest.raises(InvalidProfile):
        open_profile(tampered, AIRLINE_KEY, "skyways")
    with pytest.raises(InvalidProfile):
        open_profile(profile().sign(sign_with(OTHER)), AIRLINE_KEY, "skyways")
    with pytest.raises(InvalidProfile):
        open_profile(data, AIRLINE_KEY, "other-air")


def test_profile_refuses_unknown_time_zones_and_bad_hours() -> None:
    with pytest.raises(MalformedFrame):
        profile(tz="Mars/Olympus")
    with pytest.raises(MalformedFrame):
        OpeningHours(0, 17 * 60, 9 * 60)


def test_hours_follow_the_business_time_zone() -> None:
    # Monday 2026-11-23: 09:30 in Berlin is 08:30 UTC; 08:30 Berlin is closed.
    berlin = profile()
    assert is_open(berlin, at(2026, 11, 23, 9, 30))
    assert not is_open(berlin, at(2026, 11, 23, 8, 30))
    # The same instant for a New York business is 03:30 — closed.
    assert not is_open(profile(tz="America/New_York"), at(2026, 11, 23, 9, 30))


def test_hours_across_midnight_are_two_intervals() -> None:
    night = profile(hours=[OpeningHours(4, 22 * 60, 1440), OpeningHours(5, 0, 2 * 60)])
    assert is_open(night, at(2026, 11, 27, 23, 59))  # Friday
    assert is_open(night, at(2026, 11, 28, 0, 30))  # Saturday
    assert not is_open(night, at(2026, 11, 28, 2, 0))


def test_special_days_replace_the_weekly_hours() -> None:
    holiday = profile(exceptions=[SpecialDay("2026-12-25", 0, 0), SpecialDay("2026-12-27", 10 * 60, 12 * 60)])
    assert not is_open(holiday, at(2026, 12, 25, 10))  # a Friday, but closed
    assert is_open(holiday, at(2026, 12, 27, 11))  # a Sunday, but open


def test_opening_hours_survive_the_dst_switch() -> None:
    # Berlin leaves summer time on Sunday 2026-10-25; Monday 09:00 is 08:00 UTC.
    assert is_open(profile(), at(2026, 10, 26, 9, 0))
    assert not is_open(profile(), at(2026, 10, 26, 8, 59))


def test_away_period_is_one_value_per_closed_period() -> None:
    p = profile()
    friday_evening = at(2026, 11, 27, 18)
    saturday = at(2026, 11, 28, 12)
    monday_open = at(2026, 11, 30, 9)
    assert away_period(p, friday_evening) == away_period(p, saturday) == monday_open
    assert away_period(p, monday_open) is None
    assert away_period(p, at(2026, 11, 30, 17)) == at(2026, 12, 1, 9)


def test_business_with_no_hours_is_away_indefinitely() -> None:
    assert away_period(profile(hours=()), NOW) == 2**53 - 1


@pytest.mark.parametrize("tz", ["America/Argentina", "Etc", "a" * 300])
def test_a_time_zone_folder_or_overlong_name_is_refused_like_any_unknown_zone(tz: str) -> None:
    """ZoneInfo opens the name as a path under its database: a folder raised
    IsADirectoryError and a long name ENAMETOOLONG, neither a ValueError, so a business
    typing /profile Shop America/Argentina in the chat ended it with a traceback (and
    publish_profile raised OSError, not MalformedFrame)."""
    with pytest.raises(MalformedFrame, match="timezone"):
        profile(tz=tz)
