"""The relay's side of the transparency log: signing tree heads (SPEC §15.3).

The store appends entries with the changes they record and keeps the heads
(``store.transparency``); what only the relay process can do is sign, since it
holds the relay key. Every ``RelayConfig.sth_interval_s`` (``STH_INTERVAL``, default
10 s) each relay process asks the store for the log's size and root and, when the log
grew since the newest head, signs one and offers it; the store keeps it only if
it is still the newest and carries the log's own root, so relay processes that
share a store publish one line of heads between them, each consistent with
every earlier one.

Not here: the entries (``store.transparency``), hashing and verification
(``blindrelay.protocol.transparency``), the timer (``relay``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from blindrelay.protocol.transparency.treehead import sign_tree_head

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
