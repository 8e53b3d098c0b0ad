"""How the PostgreSQL back end's rows become the records and values the relay gets.

Pair states are stored as the SQLite back end stores them (consent as JSON, handle
sets comma-joined, sorted), so a pair row reads the same in either back end's
inspection. Also: what a failed operation reports (:func:`job_error`), which failures
mean the connection is gone (:func:`connection_lost`) or the batch should simply run
again (:func:`retryable`).

Not here: SQL (``batch``, ``operations``), the rules (``..rules``).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from blindrelay.protocol.consent import INITIAL, CategoryConsent, CategoryState, PairState
from blindrelay.protocol.errors import ProtocolError

from .. import StoreJobError


def pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _split(joined: str) -> frozenset[str]:
    return frozenset(joined.split(",")) if joined else frozenset()


def _join(values: frozenset[str]) -> str:
    return ",".join(sorted(values))


_DECODED_MAX = 50_000
_decoded: dict[tuple[str, str, int, str, str, int], PairState] = {}
"""Pair rows already decoded: a SEND reads its pair's row in every batch, and the row
changes far more rarely (JSON decoding was a fifth of a SEND's decision). PairState is
immutable, so equal rows share one; emptied when full."""


def pair_from_row(
    consent: str, pending: str, window_until: int, blockers: str, wrote: str, requests: int
) -> PairState:
    key = (consent, pending, window_until, blockers, wrote, requests)
    state = _decoded.get(key)
    if state is None:
        if len(_decoded) >= _DECODED_MAX:
            _decoded.clear()
        state = _decoded[key] = _decode_pair(*key)
    return state


def _decode_pair(
    consent: str, pending: str, window_until: int, blockers: str, wrote: str, requests: int
) -> PairState:
    return PairState(
        consent={
            name: CategoryConsent(CategoryState(state), int(until))
            for name, (state, until) in json.loads(consent).items()
        },
        pending=_split(pending),
        window_until=int(window_until),
        blockers=_split(blockers),
        wrote=_split(wrote),
        requests=int(requests),
    )


def pair_to_row(state: PairState) -> tuple[str, str, int, str, str, int]:
    """(consent, pending, window_until, blockers, wrote, requests) of ``state``."""
    consent = json.dumps(
        {name: [c.state.value, c.until] for name, c in sorted(state.consent.items())}
    )
    return (
        consent, _join(state.pending), state.window_until, _join(state.blockers),
        _join(state.wrote), state.requests,
    )  # fmt: skip


def pair_or_initial(row: Any) -> PairState:
    """A ``pairs`` row (consent … requests, in order) or None: the initial state."""
    if row is None:
        return INITIAL
    return pair_from_row(row[0], row[1], row[2], row[3], row[4], row[5])


def envelope_row(row: Any) -> list[Any]:
    """A ``queue`` row (:data:`QUEUE_COLUMNS` order) as :func:`..records.envelope_row`."""
    return [
        row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6],
        list(row[7]) if row[7] is not None else None, row[8], bytes(row[9]),
    ]  # fmt: skip


QUEUE_COLUMNS = (
    "delivery_id, recipient, sender, sender_kind, msg_id, intent, category, categories,"
    " sent_at, body"
)


def where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"


def job_error(exc: Exception) -> Exception:
    """What the caller gets for a failed operation: a refusal as itself, anything else
    as its type and place only (SPEC §9: no detail, and none for the log either)."""
    if isinstance(exc, ProtocolError | StoreJobError):
        return exc
    return StoreJobError(type(exc).__name__, where(exc))


_CONNECTION_STATES = ("08", "57P", "53300", "3D000")
"""SQLSTATE classes that mean the server, not the statement, failed: connection
exceptions, operator intervention (shutdown, crash, starting up), too many
connections, and a database dropped under the relay."""

RETRYABLE_STATES = frozenset({"40P01", "40001"})
"""Deadlock and serialization failure between workers: the batch runs again."""


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the store is unreachable (an outage), not a failed operation."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.ConnectionDoesNotExistError):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc) or "connection" in str(exc)
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith(_CONNECTION_STATES)
    return False


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", "") in (
        RETRYABLE_STATES
    )
