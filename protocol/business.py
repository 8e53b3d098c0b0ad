"""Business accounts: verified badges, signed profiles, business hours (SPEC §8).

A **badge** is the operator's signed word that a handle with a given identity
key is the business it claims to be; clients check it offline against the
operator key they pin (:func:`check_badge`). A **profile** is the business's
own signed description — name, hours, time zone — which the relay stores and
serves but cannot alter (:func:`open_profile`). :func:`is_open` and
:func:`away_period` turn a profile and an injected clock into "open now?" and
"which closed period are we in?", the latter being the key for sending an
away reply at most once per customer per closed period.

Not here: the away message itself (the business client keeps it and sends it
end-to-end encrypted), storage, or the operator's private key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import limits
from .crypto.fingerprint import key_fingerprint
from .errors import InvalidProfile, MalformedFrame, ProtocolError
from .frames import MAX_TIME_MS, check_handle
from .signed import (
    SignedBody,
    Signer,
    check_exact_len,
    check_time,
    check_version,
    open_signed,
    reraise_as,
)

MINUTES_PER_DAY = 24 * 60
DESCRIPTION_MAX_LEN = 512
MAX_HOURS_ENTRIES = 7 * 4
"""Up to four opening intervals per weekday (split shifts, lunch breaks)."""
MAX_EXCEPTIONS = 64
"""Holidays and special days a profile may list; re-sign to roll the list on."""
LOOKAHEAD_DAYS = 400
"""How far :func:`away_period` searches for the next opening; a business closed
longer than this is treated as closed indefinitely."""

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def _check_text(value: str, name: str, maximum: int, *, allow_empty: bool = False) -> None:
    if not allow_empty and not value.strip():
        raise MalformedFrame(f"{name}: must not be empty")
    if len(value) > maximum:
        raise MalformedFrame(f"{name}: at most {maximum} characters")


# --- badges (SPEC §8.1) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Badge(SignedBody):
    """Operator-signed binding of handle, key fingerprint and display name."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/badge"
    MAX_BYTES: ClassVar[int] = limits.MAX_BADGE_BYTES

    v: int
    handle: str
    key_fingerprint: bytes
    display_name: str
    serial: int
    issued_at: int
    expires_at: int

    def __post_init__(self) -> None:
        check_version(self.v)
        check_handle(self.handle)
        check_exact_len(self.key_fingerprint, "key_fingerprint", 32)
        _check_text(self.display_name, "display_name", limits.DISPLAY_NAME_MAX_LEN)
        if not 0 <= self.serial < 2**63:
            raise MalformedFrame("serial: out of range")
        check_time(self.issued_at, "issued_at")
        check_time(self.expires_at, "expires_at")
        if not self.issued_at < self.expires_at <= self.issued_at + limits.MAX_BADGE_VALIDITY_MS:
            raise MalformedFrame("expires_at: must follow issued_at within the maximum validity")


def issue_badge(
    operator: Signer,
    *,
    handle: str,
    identity_key: bytes,
    display_name: str,
    serial: int,
    now_ms: int,
    validity_ms: int,
) -> bytes:
    """What ``blindrelay admin verify-business`` produces: the signed badge bytes."""
    badge = Badge(
        v=1,
        handle=handle,
        key_fingerprint=key_fingerprint(identity_key),
        display_name=display_name,
        serial=serial,
        issued_at=now_ms,
        expires_at=now_ms + validity_ms,
    )
    return badge.sign(operator)


class BadgeStatus(Enum):
    VERIFIED = "verified"
    ABSENT = "absent"
    BAD_SIGNATURE = "bad signature"
    WRONG_HANDLE = "issued for another handle"
    WRONG_KEY = "issued for another identity key"
    NOT_YET_VALID = "not yet valid"
    EXPIRED = "expired"
    NOT_LOGGED = "not in the relay's transparency log"
    """Signed by the operator, but the relay proves no log entry for it (SPEC §15.6
    rule 6): a badge the log does not hold may be one the operator never issued
    through the relay; shown as unverified."""
    LOG_FORKED = "the relay's transparency log is forked"
    """Signed by the operator, but the relay was caught signing two histories of its log
    (the split-view alarm, SPEC §15.6 rule 5): a log proof from it no longer shows that
    everyone is shown this badge, so none is asked for; shown as unverified."""


@dataclass(frozen=True, slots=True)
class BadgeCheck:
    status: BadgeStatus
    badge: Badge | None = None

    @property
    def verified(self) -> bool:
        return self.status is BadgeStatus.VERIFIED

    @property
    def display_name(self) -> str | None:
        return self.badge.display_name if self.verified and self.badge else None


def check_badge(
    data: bytes | None, *, operator_key: bytes, handle: str, identity_key: bytes, now_ms: int
) -> BadgeCheck:
    """SPEC §8.1: verified only if every condition holds; anything else is unverified.

    Never raises for a bad badge: a forged or broken badge is a *status* to
    show the person ("unverified"), not an error that stops the conversation.
    """
    if data is None:
        return BadgeCheck(BadgeStatus.ABSENT)
    try:
        badge = open_signed(Badge, data, operator_key)
    except ProtocolError:
        return BadgeCheck(BadgeStatus.BAD_SIGNATURE)
    if badge.handle != handle:
        return BadgeCheck(BadgeStatus.WRONG_HANDLE, badge)
    if badge.key_fingerprint != key_fingerprint(identity_key):
        return BadgeCheck(BadgeStatus.WRONG_KEY, badge)
    if now_ms < badge.issued_at:
        return BadgeCheck(BadgeStatus.NOT_YET_VALID, badge)
    if now_ms >= badge.expires_at:
        return BadgeCheck(BadgeStatus.EXPIRED, badge)
    return BadgeCheck(BadgeStatus.VERIFIED, badge)


# --- profiles (SPEC §8.2) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpeningHours:
    """One opening interval on a weekday (0 = Monday), minutes after local midnight."""

    day: int
    open: int
    close: int

    def __post_init__(self) -> None:
        if not 0 <= self.day <= 6:
            raise MalformedFrame("day: 0 (Monday) to 6 (Sunday)")
        _check_interval(self.open, self.close)


@dataclass(frozen=True, slots=True)
class SpecialDay:
    """A local date whose hours replace the weekly ones; open = close = 0 is closed."""

    date: str
    open: int
    close: int

    def __post_init__(self) -> None:
        if not _DATE_RE.match(self.date):
            raise MalformedFrame("date: must be YYYY-MM-DD")
        try:
            date.fromisoformat(self.date)
        except ValueError:
            raise MalformedFrame("date: not a calendar date") from None
        if not (self.open == self.close == 0):
            _check_interval(self.open, self.close)

    @property
    def closed(self) -> bool:
        return self.open == self.close == 0


def _check_interval(open_: int, close: int) -> None:
    if not 0 <= open_ < close <= MINUTES_PER_DAY:
        raise MalformedFrame("hours: need 0 <= open < close <= 1440")


@dataclass(frozen=True, slots=True)
class BusinessProfile(SignedBody):
    """The business's signed public description (SPEC §8.2)."""

    CONTEXT: ClassVar[bytes] = b"blindrelay/v1/profile"
    MAX_BYTES: ClassVar[int] = limits.MAX_PROFILE_BYTES

    v: int
    handle: str
    display_name: str
    description: str
    timezone: str
    hours: tuple[OpeningHours, ...]
    exceptions: tuple[SpecialDay, ...]
    issued_at: int

    def __post_init__(self) -> None:
        check_version(self.v)
        check_handle(self.handle)
        _check_text(self.display_name, "display_name", limits.DISPLAY_NAME_MAX_LEN)
        _check_text(self.description, "description", DESCRIPTION_MAX_LEN, allow_empty=True)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # a folder, a name too long
            raise MalformedFrame("timezone: not an IANA time-zone name") from None
        if len(self.hours) > MAX_HOURS_ENTRIES or len(self.exceptions) > MAX_EXCEPTIONS:
            raise MalformedFrame("hours/exceptions: too many entries")
        if len({e.date for e in self.exceptions}) != len(self.exceptions):
            raise MalformedFrame("exceptions: one entry per date")
        check_time(self.issued_at, "issued_at")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def open_profile(data: bytes, identity_key: bytes, handle: str) -> BusinessProfile:
    """Verify a profile against the business's key and handle (SPEC §8.2)."""
    try:
        profile = open_signed(BusinessProfile, data, identity_key)
    except ProtocolError as exc:
        raise reraise_as(exc, InvalidProfile) from None
    if profile.handle != handle:
        raise InvalidProfile("handle: profile made for another business")
    return profile


def _intervals_on(profile: BusinessProfile, day: date) -> list[tuple[int, int]]:
    special = next((e for e in profile.exceptions if e.date == day.isoformat()), None)
    if special is not None:
        return [] if special.closed else [(special.open, special.close)]
    return sorted((h.open, h.close) for h in profile.hours if h.day == day.weekday())


def _local_ms(zone: ZoneInfo, day: date, minutes: int) -> int:
    """Unix ms of a local wall-clock time (1440 = the next midnight)."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    wall = midnight.replace(tzinfo=None) + timedelta(minutes=minutes)
    return int(wall.replace(tzinfo=zone).timestamp() * 1000)


def is_open(profile: BusinessProfile, now_ms: int) -> bool:
    """Whether the business is open at ``now_ms`` by its own clock and calendar."""
    zone = profile.zone
    local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone)
    today = local.date()
    for open_, close in _intervals_on(profile, today):
        if _local_ms(zone, today, open_) <= now_ms < _local_ms(zone, today, close):
            return True
    return False


def away_period(profile: BusinessProfile, now_ms: int) -> int | None:
    """Identifies the closed period containing ``now_ms``; ``None`` when open.

    The value is the Unix ms at which the business next opens (or
    ``MAX_TIME_MS`` if not within ``LOOKAHEAD_DAYS``). Every moment of one
    closed period maps to the same value, so "one away reply per customer per
    closed period" is "one per (customer, away_period)".
    """
    if is_open(profile, now_ms):
        return None
    zone = profile.zone
    today = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone).date()
    for offset in range(LOOKAHEAD_DAYS + 1):
        day = today + timedelta(days=offset)
        for open_, _close in _intervals_on(profile, day):
            start = _local_ms(zone, day, open_)
            if start > now_ms:
                return start
    return MAX_TIME_MS
