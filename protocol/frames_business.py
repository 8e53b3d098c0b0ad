"""Frames of business accounts (SPEC §8): PROFILE_PUT, PROFILE_FETCH, PROFILE,
USAGE_FETCH, USAGE with its usage counts, BILL_FETCH and BILL.

Why together: a business's public record and its metering, what ``server/business``
serves; the UTC month they count in is checked only here. Shared parts are in
:mod:`.frames_base`; import frames from :mod:`.frames`, which gathers every family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from . import limits
from .errors import MalformedFrame
from .frames_base import (
    CATEGORIES,
    MAX_DELIVERY_ID,
    FrameType,
    Request,
    Response,
    check_enum,
    check_handle,
    check_len,
    check_max,
    check_proof,
    check_size,
    check_uint,
)

_MONTH_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])\Z")  # ASCII digits: \d matches any script's


def _check_month(value: str) -> None:
    """A UTC month as metering counts it (SPEC §8.4)."""
    if not _MONTH_RE.match(value):
        raise MalformedFrame("month: must be YYYY-MM")


@dataclass(frozen=True, slots=True)
class UsageCount:
    """Business-initiated notifications accepted in one category (SPEC §8.4)."""

    category: str
    count: int

    def __post_init__(self) -> None:
        check_enum(self.category, "category", CATEGORIES)
        check_uint(self.count, "count", MAX_DELIVERY_ID)


# §8 Business accounts


@dataclass(frozen=True, slots=True)
class ProfilePut(Request):
    """Publish the business's signed profile (SPEC §8.2)."""

    TYPE: ClassVar[FrameType] = FrameType.PROFILE_PUT
    profile: bytes

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_size(self.profile, "profile", limits.MAX_PROFILE_BYTES)


@dataclass(frozen=True, slots=True)
class ProfileFetch(Request):
    """Ask for a business's signed profile and badge (SPEC §8.2)."""

    TYPE: ClassVar[FrameType] = FrameType.PROFILE_FETCH
    handle: str

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        check_handle(self.handle)


@dataclass(frozen=True, slots=True)
class Profile(Response):
    """A business's public record: key, signed profile, operator-signed badge (SPEC §8.1–8.2)."""

    TYPE: ClassVar[FrameType] = FrameType.PROFILE
    handle: str
    identity_key: bytes
    profile: bytes | None = None
    badge: bytes | None = None

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        check_handle(self.handle)
        check_len(self.identity_key, "identity_key", 32)
        if self.profile is not None:
            check_size(self.profile, "profile", limits.MAX_PROFILE_BYTES)
        if self.badge is not None:
            check_size(self.badge, "badge", limits.MAX_BADGE_BYTES)


@dataclass(frozen=True, slots=True)
class UsageFetch(Request):
    """A business asks for its own metered usage in a UTC month (SPEC §8.4)."""

    TYPE: ClassVar[FrameType] = FrameType.USAGE_FETCH
    month: str

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        _check_month(self.month)


@dataclass(frozen=True, slots=True)
class Usage(Response):
    """Metered counts for one month: billable notifications and free traffic."""

    TYPE: ClassVar[FrameType] = FrameType.USAGE
    month: str
    notifications: tuple[UsageCount, ...]
    service_replies: int
    user_initiated: int

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        _check_month(self.month)
        check_max(self.notifications, "notifications", limits.MAX_CATEGORIES)
        check_uint(self.service_replies, "service_replies", MAX_DELIVERY_ID)
        check_uint(self.user_initiated, "user_initiated", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class BillFetch(Request):
    """A business asks for a page of its closed bill for a UTC month (SPEC §8.5)."""

    TYPE: ClassVar[FrameType] = FrameType.BILL_FETCH
    month: str
    start: int = 0

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        _check_month(self.month)
        check_uint(self.start, "start", MAX_DELIVERY_ID)


@dataclass(frozen=True, slots=True)
class Bill(Response):
    """A page of a logged bill: the bill's log entry with its inclusion proof under a
    signed tree head, the recipients' salt, and items ``start`` … (SPEC §8.5)."""

    TYPE: ClassVar[FrameType] = FrameType.BILL
    month: str
    entry: bytes
    index: int
    proof: tuple[bytes, ...]
    sth: bytes
    salt: bytes
    start: int
    items: tuple[bytes, ...]

    def __post_init__(self) -> None:
        Response.__post_init__(self)
        _check_month(self.month)
        check_size(self.entry, "entry", limits.MAX_LOG_ENTRY_BYTES)
        check_uint(self.index, "index", MAX_DELIVERY_ID)
        check_proof(self.proof)
        check_size(self.sth, "sth", limits.MAX_TREE_HEAD_BYTES)
        check_len(self.salt, "salt", 16)
        check_uint(self.start, "start", MAX_DELIVERY_ID)
        check_max(self.items, "items", limits.MAX_BILL_ITEMS)
        for item in self.items:
            check_size(item, "items", limits.MAX_BILL_ITEM_BYTES)
