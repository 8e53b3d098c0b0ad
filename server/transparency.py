"""The relay's side of the transparency log: signing tree heads (SPEC §15.3) and
answering the log's frames (SPEC §15.6).

The store appends entries with the changes they record and keeps the heads
(``store.transparency``); what only the relay process can do is sign, since it
holds the relay key. Every ``RelayConfig.sth_interval_s`` (``STH_INTERVAL``, default
10 s) each relay process asks the store for the log's size and root and, when the log
grew since the newest head, signs one and offers it; the store keeps it only if
it is still the newest and carries the log's own root, so relay processes that
share a store publish one line of heads between them, each consistent with
every earlier one.

The four fetches are served on any open channel, before a login too (an auditor
has no account), each after taking a token of a log-fetch bucket (:func:`_take_token`)
and then one store operation: the store checks sizes against the newest signed head, so a
proof is only ever for a tree the relay signed. DISCOVERABLE publishes a user's key.

Not here: the entries (``store.transparency``), hashing and verification
(``blindrelay.protocol.transparency``), the timer (``relay``), BUNDLE's proof
(``directory``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.frames import (
    Discoverable,
    LogConsistency,
    LogConsistencyFetch,
    LogEntries,
    LogEntriesFetch,
    LogHeadFetch,
    LogInclusion,
    LogInclusionFetch,
    Ok,
)
from blindrelay.protocol.frames import (
    LogHead as LogHeadFrame,
)
from blindrelay.protocol.transparency.treehead import sign_tree_head

from .context import RelayContext, Session
from .logs import log_event
from .store import Store
from .store.records import LogHead


async def publish_tree_head(
    store: Store, sign: Callable[[bytes], bytes], clock: Callable[[], int]
) -> LogHead | None:
    """Sign and store a head of the log as it is now, if it grew; the head, or None."""
    size, root, newest = await store.submit("log_state")
    if size == 0 or (newest is not None and newest[0] >= size):
        return None  # "only when the log grew since its newest STH"
    # "its timestamp is not earlier": another worker's clock may be ahead of ours.
    timestamp = max(clock(), newest[2] if newest is not None else 0)
    signed = sign_tree_head(sign, size, root, timestamp)
    if not await store.submit("log_add_head", size, root, timestamp, signed):
        return None  # another relay process published as large a head first
    log_event(logging.INFO, "tree_head", size=size)
    return LogHead(size, root, timestamp, signed)


def log_bucket(session: Session) -> str | tuple[str, str]:
    """The key of ``session``'s log-fetch bucket (SPEC §10, §15.6): its account's once it
    logged in, its *source*'s before (SPEC §4.6.1) — a tuple, never equal to a handle
    (``10.1.2.3`` is one).

    Why not the connection's: a connection costs nothing to open, so a bucket of its own
    gave every new one a full burst — one address holding its 32 connections not logged
    in and opening 20 a second had the writer answer thousands of fetches a second, no
    account needed (threat model T33), and one account reconnecting as fast got 4,000 a
    second where its bucket allows 100 (T80). An auditor behind a shared address shares
    the rate.
    """
    handle = session.handle
    return handle if handle is not None else ("source", session.source)


def _take_token(ctx: RelayContext, session: Session) -> None:
    """SPEC §10, §15.6: a token of the session's log-fetch bucket (:func:`log_bucket`)."""
    ctx.limiters.log_fetch.take(log_bucket(session))


def fetch_head(ctx: RelayContext, session: Session, frame: LogHeadFetch) -> None:
    _take_token(ctx, session)  # SPEC §10, before any work

    def answer(row: list[Any] | None) -> None:
        session.send(LogHeadFrame(re=frame.id, sth=None if row is None else row[3]))

    ctx.run_job(session, frame, "log_head", (), answer)


def fetch_consistency(ctx: RelayContext, session: Session, frame: LogConsistencyFetch) -> None:
    _take_token(ctx, session)

    def answer(proof: list[bytes]) -> None:
        session.send(LogConsistency(re=frame.id, proof=tuple(proof)))

    ctx.run_job(
        session, frame, "log_signed_consistency", (frame.first, frame.second), answer
    )


def fetch_inclusion(ctx: RelayContext, session: Session, frame: LogInclusionFetch) -> None:
    _take_token(ctx, session)

    def answer(found: list[Any]) -> None:
        index, proof = found
        session.send(LogInclusion(re=frame.id, index=index, proof=tuple(proof)))

    ctx.run_job(session, frame, "log_find", (frame.entry, frame.size), answer)


def fetch_entries(ctx: RelayContext, session: Session, frame: LogEntriesFetch) -> None:
    _take_token(ctx, session)
    count = min(frame.count, limits.MAX_LOG_ENTRIES)

    def answer(entries: list[bytes]) -> None:
        session.send(LogEntries(re=frame.id, start=frame.start, entries=tuple(entries)))

    ctx.run_job(session, frame, "log_entries", (frame.start, count), answer)


def publish(ctx: RelayContext, session: Session, frame: Discoverable) -> None:
    """SPEC §15.6 rule 4: a user's key binding logged from now on; OK whatever it did."""
    handle = session.handle
    assert handle is not None
    ctx.limiters.profile_put.take(handle)  # SPEC §10: DISCOVERABLE's bucket

    def answer(published: bool) -> None:
        if published:
            log_event(logging.INFO, "key_published", handle=handle)
        session.send(Ok(re=frame.id))

    ctx.run_job(session, frame, "publish_key", (handle, ctx.clock()), answer)
