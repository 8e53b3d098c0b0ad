"""The PostgreSQL back end as the relay sees it: a :class:`~..Store` over one database
that any number of relay workers share (the operator's side: ``admin``).

:class:`PostgresStore` is one worker's: every call (operations and ``read``) joins one
ordered stream; everything called while the previous batch ran becomes the next batch,
one transaction (``batch``), so at most one is in flight and every ``done`` runs after
its batch's ``COMMIT`` returned, in submission order. A worker's hints to the others
go out inside that transaction (``pg_notify``), stamped with its ``origin``.

Outages. If the connection breaks (the server restarts, the network drops), the batch
in flight — committed or not, nobody knows — and every call until the store is back
fail with STORE_UNAVAILABLE (902, ``retry_after`` the current backoff), never with a
success; the store reconnects by itself with capped exponential backoff, and reports
both edges through ``on_available`` so the relay can page every outbox again once it
is back. ``on_lost`` is never called for an outage: the relay keeps running.

Not here: what a batch does (``batch``), the schema (``schema``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from blindrelay.protocol.errors import InternalError, StoreUnavailable

from ... import routing
from ...logs import log_event
from .. import Done, StoreStartError, redact, settling
from .batch import READS, Counters, run_batch
from .rows import connection_lost, where
from .schema import migrate
from .tx import Call, Outcome

INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
"""Reconnection delays after an outage: doubled after every failed attempt, up to this."""


CONNECT_TIMEOUT_S = 10.0

PLANNER_SETTINGS = {
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
    "jit": "off",
}
"""Keyed look-ups only. Every statement a batch runs finds its rows by key (a handle, a
delivery id, a msg id), and ``queue`` and ``sent`` churn far faster than their
statistics follow: a plan cached while they were small — a hash join over a sequential
scan — stayed in use as they grew, so a batch's SEND read and ACK cost grew with the
tables (measured: 14 and 7.6 µs of backend CPU per message, then 4.6 and 4.7 with index
look-ups). Off only penalises those plans: a statement with no index path still runs
(the purge of refilled budgets), and without JIT its penalised cost compiles nothing."""

SERVER_SETTINGS = {
    "synchronous_commit": "on",
    "application_name": "blindrelay",
    "standard_conforming_strings": "on",
    **PLANNER_SETTINGS,
}
"""Every connection's: the relay's durability, its name in ``pg_stat_activity``, string
literals where only quotes are special (``batch.literal``), and the planner's."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def connect(url: str) -> Any:
    """A connection with the relay's durability (``synchronous_commit=on``)."""
    return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S, server_settings=SERVER_SETTINGS)


async def vacuum_problem(conn: Any) -> str | None:
    """Why this server would never reclaim the queue's acknowledged rows, in one line
    saying what to do; or None.

    Why the relay asks: every message is a row inserted into ``queue`` and deleted at its
    ACK, so the table churns at the message rate, and only (auto)vacuum makes the dead
    rows' space reusable. Without it the table and its indexes grow by every message
    ever relayed, and every read of them slows: in soaks at 2,400 msg/s on a server with
    autovacuum off, ``queue`` held a million dead rows (1.2 GB) after 7 minutes, and a
    30-minute run's p99 rose from 50 to 266 ms (docs/operations.md, "Vacuum")."""
    autovacuum, track_counts = await conn.fetchrow(
        "SELECT current_setting('autovacuum'), current_setting('track_counts')"
    )
    off = [name for name, value in (("autovacuum", autovacuum), ("track_counts", track_counts))
           if value != "on"]  # fmt: skip
    if not off:
        return None
    return (
        f"{' and '.join(off)} off on this server: the queue's acknowledged rows are never "
        "reclaimed and its latency grows; turn it on (ALTER SYSTEM SET "
        f"{off[0]} = on; SELECT pg_reload_conf()) or VACUUM the queue table often"
    )


class PostgresStore:
    """One relay worker's stream of batches to a shared PostgreSQL database."""

    def __init__(self, url: str, pool_size: int = 4, origin: str | None = None) -> None:
        self.url = url
        self.pool_size = pool_size
        self.origin = origin or routing.new_worker_id()
        """This worker's id in the hints it emits (:mod:`...routing`)."""
        self.location = f"{redact(url)} (PostgreSQL)"
        self.on_lost: Callable[[str], None] | None = None
        self.on_available: Callable[[bool], None] | None = None
        """Called with False when an outage begins and True once the store is back."""
        self.on_batch: Callable[[int, float, float], None] | None = None
        self.on_decided: Callable[[float, float, float], None] | None = None
        """Never called: values come back with their COMMIT (``Store.on_decided``)."""
        self.links: routing.EnvelopeLinks | None = None
        self.hint_seal: routing.HintSeal | None = routing.HintSeal.random()
        """What this worker's hints are sealed with: the relay sets the store's own
        (``routing.hint_key``); until then they are sealed for nobody."""
        self.counters = Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Any = None
        self._conn: Any = None
        self._pending: list[Call] = []
        self._merging: tuple[str, list[Any], list[Done]] | None = None
        self._in_flight: asyncio.Task[None] | None = None
        self._scheduled = False
        self._running = False
        self._available = False
        self._backoff_s = INITIAL_BACKOFF_S
        self._reconnecting: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def available(self) -> bool:
        """Connected: calls are being committed (False during an outage)."""
        return self._running and self._available

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, timeout=CONNECT_TIMEOUT_S,
                server_settings=SERVER_SETTINGS,
            )  # fmt: skip
            self._conn = await self._pool.acquire()
            await migrate(self._conn, redact(self.url))
            problem = await vacuum_problem(self._conn)
        except StoreStartError:
            await self._release()
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            await self._release()
            raise StoreStartError(f"cannot use {redact(self.url)}: {_reason(exc)}") from None
        if problem is not None:
            log_event(
                logging.WARNING, "store_not_vacuumed", store=redact(self.url), problem=problem
            )
        self._running = self._available = True

    async def close(self) -> None:
        """Commit and answer everything called before, then release the connections."""
        while self._in_flight is not None or self._pending:
            if self._in_flight is None:
                self._dispatch()
            if self._in_flight is not None:
                await asyncio.shield(self._in_flight)
        self._running = False
        counters = self.counters
        log_event(
            logging.INFO, "store_closed", commits=counters.commits, calls=counters.calls,
            replays=counters.replays, retries=counters.retries,
        )  # fmt: skip
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._reconnecting = None
        await self._release()

    async def _release(self) -> None:
        pool, conn, self._pool, self._conn = self._pool, self._conn, None, None
        if pool is not None:
            try:
                if conn is not None:
                    await pool.release(conn)  # pool.close() waits for every connection
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT_S)
            except Exception:
                pool.terminate()

    # --- the stream ------------------------------------------------------------------

    def call(
        self,
        operation: str,
        args: list[Any] | tuple[Any, ...],
        done: Done,
        decided: Callable[[Any], None] | None = None,
    ) -> None:
        """``decided`` is never called: a batch's values come back with its COMMIT, in
        one round trip (``batch``), so there is no earlier moment to report them."""
        if not self._running:
            raise InternalError("the store is not running")
        self._merging = None
        self._pending.append(Call(operation, args, done))
        self._schedule()

    def call_many(self, operation: str, item: Any, done: Done) -> None:
        merging = self._merging
        if merging is not None and merging[0] == operation and self._running:
            merging[1].append(item)
            merging[2].append(done)
            return
        items, dones = [item], [done]
        self.call(operation, (items,), lambda ok, value: _each(dones, ok, value))
        self._merging = (operation, items, dones)

    def submit(self, operation: str, *args: Any) -> asyncio.Future[Any]:
        assert self._loop is not None, "the store is not started"
        future: asyncio.Future[Any] = self._loop.create_future()
        self.call(operation, args, settling(future))
        return future

    def lease_send(self, sender: str, to: str, msg_id: bytes) -> list[int] | None:
        """None: workers sharing the store number deliveries in it (SPEC §6.4.6)."""
        return None

    async def queued_total(self) -> int:
        """Envelopes in the queue, every worker's (a connection of the pool, not the
        batches' own)."""
        if self._pool is None:
            raise StoreUnavailable()
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM queue"))

    def read(self, name: str, args: list[Any] | tuple[Any, ...], done: Done) -> None:
        """``name`` (account, account_for_login, check_prekey_upload) with ``args``, as an
        operation of the stream that writes nothing: ``done`` after every call before it."""
        if name not in READS:
            raise ValueError(f"no read {name!r}")
        self.call(name, args, done)

    def _schedule(self) -> None:
        if not self._scheduled and self._in_flight is None:
            assert self._loop is not None
            self._scheduled = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        if self._in_flight is not None or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._merging = None
        assert self._loop is not None
        self._in_flight = self._loop.create_task(self._run(batch))

    async def _run(self, batch: list[Call]) -> None:
        outcomes: list[Outcome]
        if not self._available:
            outcomes = [(False, self._unavailable())] * len(batch)
        else:
            try:
                started = time.perf_counter()
                outcomes = await run_batch(
                    self._conn, batch, self.origin, self.counters, self.links, self.hint_seal
                )
                if self.on_batch is not None:
                    self.on_batch(
                        len(batch), time.perf_counter() - started, self.counters.last_commit_s
                    )
            except Exception as exc:
                if not connection_lost(exc):
                    log_event(
                        logging.ERROR, "store_batch_failed", exc_type=type(exc).__name__,
                        exc_at=where(exc), calls=len(batch),
                    )  # fmt: skip
                self._outage(exc)
                outcomes = [(False, self._unavailable())] * len(batch)
        self._in_flight = None
        for call, (ok, value) in zip(batch, outcomes, strict=True):
            try:
                call.done(ok, value)
            except Exception as exc:  # a callback's bug must not lose the others' outcomes
                log_event(
                    logging.ERROR, "internal_error", exc_type=type(exc).__name__,
                    exc_at=where(exc),
                )  # fmt: skip
        if self._pending:
            self._dispatch()

    # --- outages ---------------------------------------------------------------------

    def _unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(retry_after_ms=max(1, round(self._backoff_s * 1000)))

    def _outage(self, exc: BaseException) -> None:
        if not self._available or not self._running:
            return
        self._available = False
        log_event(
            logging.WARNING, "store_unavailable", exc_type=type(exc).__name__,
            reason=_reason(exc) if connection_lost(exc) else "",
        )  # fmt: skip
        self._notify_available(False)
        assert self._loop is not None
        self._reconnecting = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        broken, self._conn = self._conn, None
        try:
            if broken is not None:
                broken.terminate()
                await self._pool.release(broken)
            await self._pool.expire_connections()  # the idle ones are as dead
        except Exception as exc:  # a broken pool still hands out fresh connections
            log_event(logging.WARNING, "store_pool_reset_failed", exc_type=type(exc).__name__)
        self._backoff_s = INITIAL_BACKOFF_S
        attempts = 0
        while True:
            await asyncio.sleep(self._backoff_s)
            attempts += 1
            try:
                conn = await self._pool.acquire()
            except Exception:
                self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
                continue
            try:
                await conn.execute("SELECT 1")
            except Exception:
                conn.terminate()
                await self._pool.release(conn)
                self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
                continue
            break
        self._conn = conn
        self._backoff_s = INITIAL_BACKOFF_S
        self._available = True
        self._reconnecting = None
        log_event(logging.WARNING, "store_available", attempts=attempts)
        self._notify_available(True)

    def _notify_available(self, available: bool) -> None:
        if self.on_available is not None:
            try:
                self.on_available(available)
            except Exception as exc:
                log_event(
                    logging.ERROR, "internal_error", exc_type=type(exc).__name__,
                    exc_at=where(exc),
                )  # fmt: skip

    # --- synchronous reads (until the handlers use ``read``) -------------------------


def _each(dones: list[Done], ok: bool, value: Any) -> None:
    """A merged call's outcome, item by item: its result, or everyone its error."""
    results = value if ok else [value] * len(dones)
    for done, result in zip(dones, results, strict=True):
        try:
            done(ok, result)
        except Exception as exc:  # one callback's bug must not lose the others' outcomes
            log_event(logging.ERROR, "internal_error", exc_type=type(exc).__name__,
                      exc_at=where(exc))  # fmt: skip


# --- the operator's store ---------------------------------------------------------------
