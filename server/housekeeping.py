"""The store's periodic jobs, beside the relay's connections: what each is for is in
its method; ``start`` runs them all in the background, ``stop`` cancels them.

- the purge of envelopes and remembered message ids past the queue TTL (SPEC §6.6);
- the checkpoint that folds the WAL into the database (SPEC §11.2);
- bills of ended months closed, then a tree head signed if the log grew (SPEC §8.5,
  §15.3), when the relay signs heads;
- a store round trip every ``PROBE_INTERVAL_S`` for ``/readyz``, and the queue counted
  every ``QUEUE_COUNT_INTERVAL_S`` for ``/metrics``.

Each runs on its own interval and logs its failure without stopping the others: a lost
store stops the relay anyway (``relay``). Tests call the jobs directly.

Not here: the connections and their lifecycle (``relay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.transparency.bills import month_of

from . import transparency
from .config import RelayConfig
from .context import RelayContext
from .logs import log_event
from .metrics import PROBE_INTERVAL_S, QUEUE_COUNT_INTERVAL_S
from .store.records import LogHead


class Housekeeping:
    """The periodic jobs of one relay process (module docstring)."""

    def __init__(
        self, config: RelayConfig, ctx: RelayContext, sign: Callable[[bytes], bytes] | None
    ) -> None:
        self._config = config
        self._ctx = ctx
        self._sign = sign
        """The relay key's signature, for tree heads; None: none published."""
        self._tasks: list[asyncio.Task[None]] = []
        self._counts_started = 0
        self._count_kept = 0
        """The queue counts started, and the latest of them whose result is kept."""

    def start(self) -> None:
        loops: list[Coroutine[Any, Any, None]] = [
            self._purge_periodically(), self._probe_store_periodically(),
            self._checkpoint_periodically(),
        ]  # fmt: skip
        if self._sign is not None:
            loops.append(self._publish_periodically())
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def purge_expired(self) -> tuple[int, int]:
        """SPEC §6.6: drop envelopes and remembered msg_ids older than the queue TTL."""
        before = self._ctx.clock() - self._config.queue_ttl_ms
        envelopes, ids = await self._ctx.store.submit("purge", before, self._ctx.clock())
        if envelopes or ids:
            log_event(logging.INFO, "purged", envelopes=envelopes, msg_ids=ids)
        return envelopes, ids

    async def _purge_periodically(self) -> None:
        while True:
            try:
                await self.purge_expired()
            except Exception as exc:  # e.g. the store is lost; the relay is stopping anyway
                log_event(logging.ERROR, "purge_failed", exc_type=type(exc).__name__)
            await asyncio.sleep(self._config.purge_interval_s)

    async def checkpoint(self) -> None:
        """SPEC §11.2: the WAL folded into the database and truncated, once every
        job submitted before has committed (deleted envelopes leave the WAL)."""
        await self._ctx.store.submit("checkpoint")

    async def _checkpoint_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._config.checkpoint_interval_s)
            try:
                await self.checkpoint()
            except Exception as exc:  # e.g. the store is lost; the relay is stopping anyway
                log_event(logging.ERROR, "checkpoint_failed", exc_type=type(exc).__name__)

    async def publish_tree_head(self) -> LogHead | None:
        """SPEC §15.3: sign a head of the transparency log if it grew since the newest."""
        assert self._sign is not None, "this relay signs no tree heads"
        return await transparency.publish_tree_head(self._ctx.store, self._sign, self._ctx.clock)

    async def close_bills(self) -> list[list[Any]]:
        """SPEC §8.5: close every open bill of a month that ended ``BILL_CLOSE_DELAY_MS``
        ago or more, a chunk of items per store operation, logging each; the bills
        closed, as ``close_bills`` gives them."""
        before = month_of(self._ctx.clock() - limits.BILL_CLOSE_DELAY_MS)
        closed: list[list[Any]] = []
        more = True
        while more:
            done, more = await self._ctx.store.submit("close_bills", before, self._ctx.clock())
            for business, month, count, index in done:
                if index is None:  # metered after its bill closed: see close_bills
                    log_event(logging.ERROR, "bill_items_late", business=business, month=month,
                              items=count)  # fmt: skip
                else:
                    log_event(logging.INFO, "bill_closed", business=business, month=month,
                              items=count)  # fmt: skip
            closed += done
        return closed

    async def _publish_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._config.sth_interval_s)
            try:
                await self.close_bills()  # logged before the head that covers them
            except Exception as exc:  # a bill that cannot close must not stop the heads
                log_event(logging.ERROR, "bills_failed", exc_type=type(exc).__name__)
            try:
                await self.publish_tree_head()
            except Exception as exc:  # e.g. the store is lost; the next interval retries
                log_event(logging.ERROR, "tree_head_failed", exc_type=type(exc).__name__)

    async def probe_store(self) -> bool:
        """One store round trip (``noop``: answered once what came before it committed):
        what ``/readyz`` says ready on."""
        metrics = self._ctx.metrics
        started = metrics.now()
        try:
            await self._ctx.store.submit("noop")
        except Exception as exc:  # a store outage or a lost store: not ready
            metrics.store_failed(type(exc).__name__)
            return False
        metrics.committed(metrics.now() - started)
        return True

    async def count_queued(self) -> None:
        """The ``envelopes_queued`` gauge; left as it was while the store cannot count.
        Of two counts that overlap, the one started later is kept, whichever ends last."""
        self._counts_started += 1
        started = self._counts_started
        try:
            queued = await self._ctx.store.queued_total()
        except Exception as exc:  # an outage: /readyz says so; the gauge waits for the next
            log_event(logging.WARNING, "queue_count_failed", exc_type=type(exc).__name__)
            return
        if started > self._count_kept:
            self._count_kept = started
            self._ctx.metrics.queued = queued

    async def _probe_store_periodically(self) -> None:
        counted = -QUEUE_COUNT_INTERVAL_S
        loop = asyncio.get_running_loop()
        while True:
            await self.probe_store()
            if loop.time() - counted >= QUEUE_COUNT_INTERVAL_S:
                counted = loop.time()
                await self.count_queued()
            await asyncio.sleep(PROBE_INTERVAL_S)
