"""The rules of the per-connection state machine, as data (SPEC §4.5), h11 style.

``RECEIVABLE[role][state]`` is the set of frame types a side accepts in a state;
anything else is an :class:`~.errors.UnexpectedFrame`. ``TRANSITIONS[role][state][type]``
moves the state when a frame of that type is sent or received. A missing entry *is*
the rule::

    relay:  AWAITING_AUTH --send WELCOME--> AUTHENTICATED
    client: AWAITING_HELLO --recv HELLO--> AWAITING_AUTH --recv WELCOME--> AUTHENTICATED
    either: any --send/recv ERROR with a closing code (:func:`error_closes`)--> CLOSED

Why apart from :mod:`.connection`: these tables are what SPEC §4.5 states and what a
reviewer checks against it, line by line; the machine that applies them (challenge,
proofs, request numbering) is code of another kind, and the two together were past
the size one reads in a sitting. :mod:`.connection` re-exports every name here;
import them from there.
"""

from __future__ import annotations

from enum import Enum

from .errors import ErrorCode
from .frames import CLIENT_FRAMES, FRAME_CLASSES, FrameType


class Role(Enum):
    RELAY = "relay"
    CLIENT = "client"


class State(Enum):
    AWAITING_HELLO = "awaiting_hello"
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


_RELAY_FRAMES = frozenset(FRAME_CLASSES) - CLIENT_FRAMES
_AUTH_FRAMES = frozenset({FrameType.REGISTER, FrameType.LOGIN})
LOG_FETCHES = frozenset({
    FrameType.LOG_HEAD_FETCH, FrameType.LOG_CONSISTENCY_FETCH,
    FrameType.LOG_INCLUSION_FETCH, FrameType.LOG_ENTRIES_FETCH,
})  # fmt: skip
"""SPEC §15.6: the log is public, so reading it needs no account (an auditor's
connection never authenticates)."""
_LOG_ANSWERS = frozenset({
    FrameType.LOG_HEAD, FrameType.LOG_CONSISTENCY, FrameType.LOG_INCLUSION,
    FrameType.LOG_ENTRIES,
})  # fmt: skip

RECEIVABLE: dict[Role, dict[State, frozenset[FrameType]]] = {
    Role.RELAY: {
        State.AWAITING_AUTH: _AUTH_FRAMES | LOG_FETCHES,
        State.AUTHENTICATED: CLIENT_FRAMES - _AUTH_FRAMES,
    },
    Role.CLIENT: {
        State.AWAITING_HELLO: frozenset({FrameType.HELLO}),
        State.AWAITING_AUTH: frozenset({FrameType.WELCOME, FrameType.ERROR}) | _LOG_ANSWERS,
        State.AUTHENTICATED: _RELAY_FRAMES - {FrameType.HELLO, FrameType.WELCOME},
    },
}
"""SPEC §4.5: which frames a side accepts in each state."""

TRANSITIONS: dict[Role, dict[State, dict[FrameType, State]]] = {
    Role.RELAY: {State.AWAITING_AUTH: {FrameType.WELCOME: State.AUTHENTICATED}},
    Role.CLIENT: {
        State.AWAITING_HELLO: {FrameType.HELLO: State.AWAITING_AUTH},
        State.AWAITING_AUTH: {FrameType.WELCOME: State.AUTHENTICATED},
    },
}
"""SPEC §4.5: state changes on a sent or received frame (ERROR handled apart)."""

_T = FrameType
ANSWERS: dict[FrameType, FrameType] = {
    _T.REGISTER: _T.WELCOME, _T.LOGIN: _T.WELCOME, _T.ROTATE_IDENTITY: _T.OK,
    _T.PREKEYS_UPLOAD: _T.OK, _T.BUNDLE_FETCH: _T.BUNDLE, _T.SEND: _T.SENT,
    _T.STATEMENT: _T.OK, _T.STATEMENTS_LIST: _T.STATEMENTS, _T.PROFILE_PUT: _T.OK,
    _T.PROFILE_FETCH: _T.PROFILE, _T.USAGE_FETCH: _T.USAGE, _T.BILL_FETCH: _T.BILL,
    _T.LOG_HEAD_FETCH: _T.LOG_HEAD, _T.LOG_CONSISTENCY_FETCH: _T.LOG_CONSISTENCY,
    _T.LOG_INCLUSION_FETCH: _T.LOG_INCLUSION, _T.LOG_ENTRIES_FETCH: _T.LOG_ENTRIES,
    _T.DISCOVERABLE: _T.OK,
}  # fmt: skip
"""SPEC §2.2: the one frame, besides ERROR, that answers each request. The client takes
no other under a request's ``re`` (the relay's fault, §9): a STATEMENT answered with a
BUNDLE was taken for its OK."""


def error_closes(code: int) -> bool:
    """Whether an ERROR with ``code`` closes the connection (SPEC §9); an unknown code
    does not."""
    try:
        return ErrorCode(code).closes_connection
    except ValueError:
        return False
