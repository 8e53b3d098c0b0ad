"""What every frame family shares (SPEC §2): the wire tags, the account kinds, the
bounds and validators of field values, the request and response bases, and the two
generic answers, OK and ERROR, that a request of any family may get.

Why this module: the frame classes are split by the SPEC section that defines them,
which is also how the relay's handlers are split — :mod:`.frames_auth` (§4,
``server/auth``), :mod:`.frames_directory` (§5, ``server/directory``),
:mod:`.frames_messaging` (§6–7, ``server/delivery`` and ``server/statements``),
:mod:`.frames_business` (§8, ``server/business``) and :mod:`.frames_log` (§15.6,
``server/transparency``) — so that a reviewer reads one family in a sitting. What
more than one family needs lives here, and the families import this module and (a
BUNDLE carries a ``LogProof``) ``frames_log``, never each other otherwise.
:mod:`.frames` gathers them all and is the one place the rest of the code imports
frames from; import them from there, not from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import ClassVar

from . import limits
from .errors import ErrorCode, FrameTooLarge, MalformedFrame


class FrameType(IntEnum):
    """Wire tag of every frame (SPEC §2.1). Gaps leave room per section."""

    HELLO = 1
    REGISTER = 2
    LOGIN = 3
    WELCOME = 4
    ROTATE_IDENTITY = 5
    OK = 8
    ERROR = 9
    PREKEYS_UPLOAD = 10
    BUNDLE_FETCH = 11
    BUNDLE = 12
    PREKEYS_LOW = 13
    SEND = 20
    SENT = 21
    DELIVER = 22
    ACK = 23
    STATEMENT = 30
    STATEMENTS_LIST = 31
    STATEMENTS = 32
    PROFILE_PUT = 40
    PROFILE_FETCH = 41
    PROFILE = 42
    USAGE_FETCH = 43
    USAGE = 44
    BILL_FETCH = 45
    BILL = 46
    LOG_HEAD_FETCH = 50
    LOG_HEAD = 51
    LOG_CONSISTENCY_FETCH = 52
    LOG_CONSISTENCY = 53
    LOG_INCLUSION_FETCH = 54
    LOG_INCLUSION = 55
    LOG_ENTRIES_FETCH = 56
    LOG_ENTRIES = 57
    DISCOVERABLE = 58


class AccountKind(StrEnum):
    """SPEC §3.1."""

    USER = "user"
    BUSINESS = "business"


KINDS = frozenset(k.value for k in AccountKind)
"""The wire values of :class:`AccountKind`, as :func:`check_enum` takes them."""
CATEGORIES = frozenset(limits.CATEGORIES)
"""The notification categories (SPEC §8.3), as :func:`check_enum` takes them."""

MAX_REQUEST_ID = 2**32 - 1
MAX_DELIVERY_ID = 2**63 - 1
MAX_TIME_MS = 2**53 - 1
"""Times are Unix milliseconds from 0 to 2**53 − 1 inclusive (SPEC conventions):
the largest integer every JSON consumer of a vector reads exactly."""

_HANDLE_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")
"""SPEC §3.2: labels of letters and digits joined by single punctuation characters."""
MAX_REASON_LEN = 200


# --- validators -------------------------------------------------------------
# Each raises FrameTooLarge when a str, bin or array is longer than its type's
# maximum and MalformedFrame for everything else (SPEC §2.3), the two errors the
# codec promises for untrusted input.


def check_handle(value: str, name: str = "handle") -> None:
    """SPEC §3.2: 3–32 characters of ``[a-z0-9._-]``; "it starts and ends with a letter
    or digit and never has two punctuation characters in a row" (``airline.``,
    ``air..line`` are lookalikes of ``airline``, not handles)."""
    check_max(value, name, limits.HANDLE_MAX_LEN)
    if len(value) < limits.HANDLE_MIN_LEN:
        raise MalformedFrame(f"{name}: at least {limits.HANDLE_MIN_LEN} characters")
    if not _HANDLE_RE.match(value):
        raise MalformedFrame(f"{name}: must match [a-z0-9]+([._-][a-z0-9]+)*")


def check_uint(value: int, name: str, maximum: int, minimum: int = 0) -> None:
    """From ``minimum`` to ``maximum`` inclusive."""
    if not minimum <= value <= maximum:
        raise MalformedFrame(f"{name}: must be in {minimum}..{maximum}")


def check_len(value: bytes, name: str, size: int) -> None:
    """Exactly ``size`` bytes."""
    if len(value) != size:
        # SPEC §2.3: longer than the type's maximum is 101, shorter is 100.
        error = FrameTooLarge if len(value) > size else MalformedFrame
        raise error(f"{name}: must be exactly {size} bytes")


def check_max(value: bytes | str | tuple[object, ...], name: str, maximum: int) -> None:
    """From 0 to ``maximum`` bytes, characters or items."""
    if len(value) > maximum:
        raise FrameTooLarge(f"{name}: at most {maximum}")


def check_size(value: bytes | str | tuple[object, ...], name: str, maximum: int) -> None:
    """From 1 to ``maximum`` bytes, characters or items."""
    if not value:
        raise MalformedFrame(f"{name}: must not be empty")
    if len(value) > maximum:
        raise FrameTooLarge(f"{name}: at most {maximum}")


def check_enum(value: str, name: str, allowed: frozenset[str]) -> None:
    """One of ``allowed``."""
    # Membership in a prebuilt frozenset: this runs for every frame on the hot path.
    if value not in allowed:
        raise MalformedFrame(f"{name}: must be one of {', '.join(sorted(allowed))}")


def check_proof(proof: tuple[bytes, ...]) -> None:
    """An RFC 9162 proof: at most ``MAX_PROOF_HASHES`` hashes of exactly 32 bytes (SPEC §15.2)."""
    check_max(proof, "proof", limits.MAX_PROOF_HASHES)
    for item in proof:
        check_len(item, "proof", 32)


# --- bases: what a frame is, by who sends it ---------------------------------


@dataclass(frozen=True, slots=True)
class BaseFrame:
    """Base: every frame knows its tag. Not a frame itself (the union of frames is
    :data:`.frames.Frame`)."""

    TYPE: ClassVar[FrameType]


@dataclass(frozen=True, slots=True)
class Request(BaseFrame):
    """Client→relay frame answered by exactly one response or ERROR carrying ``re = id``."""

    id: int

    def __post_init__(self) -> None:
        check_uint(self.id, "id", MAX_REQUEST_ID, minimum=1)


@dataclass(frozen=True, slots=True)
class Response(BaseFrame):
    """Relay→client answer to the request whose ``id`` it echoes in ``re``."""

    re: int

    def __post_init__(self) -> None:
        check_uint(self.re, "re", MAX_REQUEST_ID, minimum=1)


# §2.2 Generic responses


@dataclass(frozen=True, slots=True)
class Ok(Response):
    """Success of a request that returns nothing else."""

    TYPE: ClassVar[FrameType] = FrameType.OK


_RETRY_CODES = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.STORE_UNAVAILABLE})
"""Codes an ERROR carries ``retry_after`` with (SPEC §9)."""


@dataclass(frozen=True, slots=True)
class Error(BaseFrame):
    """A refusal (SPEC §9). ``re`` is absent when no request caused it.

    ``reason`` is a short developer hint, sent only with 1xx (frame) codes; every
    other code is sent bare so that refusals cannot leak relay state.
    """

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: int
    re: int | None = None
    retry_after: int | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        check_uint(self.code, "code", 999, minimum=100)
        if self.re is not None:
            check_uint(self.re, "re", MAX_REQUEST_ID, minimum=1)
        # SPEC §9: "retry_after MUST be present with 402 and 902, and only with them".
        if (self.retry_after is not None) != (self.code in _RETRY_CODES):
            raise MalformedFrame("retry_after: required with 402 and 902 and only with them")
        if self.retry_after is not None:
            check_uint(self.retry_after, "retry_after", MAX_TIME_MS, minimum=1)
        if self.reason is not None:
            check_size(self.reason, "reason", MAX_REASON_LEN)
            if not 100 <= self.code < 200:
                raise MalformedFrame("reason: only allowed with 1xx codes")
