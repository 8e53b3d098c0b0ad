"""The relay's garbage-collection policy: freeze what never dies, collect the young rarely.

Why: CPython frees most objects by reference counting; its cycle collector
exists only for reference cycles, and each collection scans every tracked
container object of the generations it collects. A relay's heap is mostly
per-connection state that lives as long as the connection (about 100 tracked
objects each: ~1M at 10,000 connections), while per-message objects die by
refcount within the loop turn that made them. CPython's defaults (young
threshold 700, then a full collection whenever the old generation grew 25 %)
fit neither: measured in the fan-out benchmark, 10,000 connects cost 11–13 full
collections (1.8–2.8 s of CPU), and a full collection during the fan-out a
0.35–0.85 s stop-the-world pause.

The policy (:func:`apply`, once the process has started):

- collect once, then ``gc.freeze()``: modules, classes, functions and the
  relay's own long-lived objects move to the permanent generation and are
  never scanned again;
- young threshold ``gc_threshold`` (default 50,000 net new container objects
  instead of 700), the older two at CPython's 10 and 10: per-message objects
  are long gone by refcount when a young collection runs, so they are neither
  scanned nor promoted, and a full collection is considered only after about
  50,000 × 11 × 11 ≈ 6M net allocations — and, as always in CPython, only once
  the old generation grew by 25 % since the last one.

The memory trade-off: cyclic garbage lives longer. A young cycle (an exception
with its traceback, say) waits up to ``gc_threshold`` net allocations instead
of 700 — a few MB at most. The big one is closed connections: websockets and
asyncio objects reference each other (a protocol and its parser generator, a
connection and its bound methods), so all ~60 tracked objects of a closed
connection are cyclic garbage (measured: a full collection after 10,000
customers hung up freed 570k objects), and they sit in the old generation,
which the raised thresholds leave alone for long. So the relay runs a full
collection itself (:class:`ClosedConnections`, ``COLLECT_DELAY_S`` later) once
the connections closed since the last one reach a quarter of those open (at
least ``MIN_CLOSED_BEFORE_COLLECTING``): dead connections then hold at most about a
quarter of what live ones hold, plus a floor, and a fan-out with no hang-ups
triggers nothing. Frozen objects are never collected: freezing happens after
a collection, so only objects alive at startup are frozen, and those live as
long as the process. An operator short of memory lowers ``--gc-threshold``
(700 restores CPython's young threshold), paying with CPU and more frequent
pauses. docs/operations.md has the operator's view.

Not here: choosing the value (``config``, ``cli``), counting connections (``relay``).
"""

from __future__ import annotations

import gc
import logging
import time

from .logs import log_event

DEFAULT_THRESHOLD = 50_000
"""Young-generation threshold: net new container objects between young collections."""

OLDER_THRESHOLDS = (10, 10)
"""CPython's own: young collections per middle one, middle ones per full one."""


def apply(threshold: int) -> int:
    """Collect, freeze everything alive, set the thresholds; returns the objects frozen.

    Called once per process after start-up, when what is alive is what lives
    as long as the process. Collecting first keeps start-up garbage out of the
    permanent generation.
    """
    if threshold < 1:
        raise ValueError("gc threshold must be positive")
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, *OLDER_THRESHOLDS)
    return gc.get_freeze_count()


CLOSED_FRACTION = 0.25
"""Closed connections since the last full collection, as a share of open ones, that
make the next one worth its pause (CPython's own rule uses 25 % heap growth)."""

MIN_CLOSED_BEFORE_COLLECTING = 1_000
"""Below this many closed connections a full collection waits: with few connections
open, a handful of hang-ups should not cost a collection each (~60 objects apiece)."""


COLLECT_DELAY_S = 1.0
"""How long after the trigger the collection runs: a closed connection's objects
become garbage only once websockets and asyncio have finished closing it (a few
loop turns later), and a burst of hang-ups then costs one collection, not several
that find nothing yet."""


class ClosedConnections:
    """Decides when closed connections' cyclic garbage is worth a full collection."""

    def __init__(self, minimum: int | None = None) -> None:
        self.minimum = MIN_CLOSED_BEFORE_COLLECTING if minimum is None else minimum
        self.since_collection = 0

    def closed(self, still_open: int) -> bool:
        """Count one closed connection; True when a full collection is due (the count restarts)."""
        self.since_collection += 1
        if self.since_collection < max(self.minimum, still_open * CLOSED_FRACTION):
            return False
        self.since_collection = 0
        return True


def collect_closed() -> None:
    """A full collection for closed connections, logged with its pause."""
    started = time.perf_counter()
    freed = gc.collect()
    pause_ms = round((time.perf_counter() - started) * 1000, 1)
    log_event(logging.INFO, "gc_collected", freed=freed, pause_ms=pause_ms)
