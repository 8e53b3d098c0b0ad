"""The PostgreSQL back end as the relay and the operator see it: a :class:`~..Store` and
an :class:`~..AdminStore` over one database that any number of relay workers share.

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

:class:`PostgresAdminStore` is the operator's: synchronous, on a private loop
(``blocking``).

Not here: what a batch does (``batch``), the schema (``schema``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from blindrelay.protocol.errors import InternalError, StoreUnavailable

from ... import routing
from ...logs import log_event
from .. import Done, StoreError, StoreStartError
from ..records import Account, MonthUsage
from .batch import READS, Call, Counters, Outcome, run_batch
from .blocking import CONNECT_TIMEOUT_S, SERVER_SETTINGS, BlockingConnection
from .operations import accounts, accounts_evenly, check_upload, stored_key_ids, usage_months
from .rows import connection_lost, where
from .schema import SCHEMA_VERSION, migrate, newer_schema, schema_version

INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
"""Reconnection delays after an outage: doubled after every failed attempt, up to this."""


def redact(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def connect(url: str) -> Any:
    """A connection with the relay's durability (``synchronous_commit=on``)."""
    return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S, server_settings=SERVER_SETTINGS)


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
        self._blocking: BlockingConnection | None = None

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
        except StoreStartError:
            await self._release()
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            await self._release()
            raise StoreStartError(f"cannot use {redact(self.url)}: {_reason(exc)}") from None
        self._running = self._available = True

    async def close(self) -> None:
        """Commit and answer everything called before, then release the connections."""
        while self._in_flight is not None or self._pending:
            if self._in_flight is None:
                self._dispatch()
            if self._in_flight is not None:
                await asyncio.shield(self._in_flight)
        self._running = False
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
        blocking, self._blocking = self._blocking, None
        if blocking is not None:
            await asyncio.to_thread(blocking.close)

    # --- the stream ------------------------------------------------------------------

    def call(self, operation: str, args: list[Any] | tuple[Any, ...], done: Done) -> None:
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

        def done(ok: bool, value: Any) -> None:
            if future.cancelled():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        self.call(operation, args, done)
        return future

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
                outcomes = await run_batch(self._conn, batch, self.origin, self.counters)
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
        if broken is not None:
            broken.terminate()
            await self._pool.release(broken)
        self._pool.expire_connections()
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

    def _read_now(self, work: Callable[[Any], Any]) -> Any:
        """Block the loop for one round trip on a connection of its own (committed data
        only, as the SQLite back end's reader sees it)."""
        if not self._running:
            raise InternalError("the store is not started")
        if self._blocking is None:
            self._blocking = BlockingConnection(self.url)
        try:
            return self._blocking.run(work)
        except Exception as exc:
            if connection_lost(exc):
                raise self._unavailable() from None
            raise

    def account(self, handle: str) -> Account | None:
        found: dict[str, Account] = self._read_now(lambda conn: accounts(conn, [handle]))
        return found.get(handle)

    def account_for_login(self, handle: str) -> Account | None:
        found: list[Account | None] = self._read_now(lambda c: accounts_evenly(c, [handle]))
        return found[0]

    def check_prekey_upload(self, handle: str, key_ids: Sequence[int], max_stored: int) -> None:
        stored: dict[str, set[int]] = self._read_now(lambda c: stored_key_ids(c, [handle]))
        check_upload(stored[handle], list(key_ids), max_stored)


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


class PostgresAdminStore:
    """The operator's connection to a relay's PostgreSQL database (synchronous)."""

    def __init__(self, url: str, blocking: BlockingConnection) -> None:
        self.url = url
        self._blocking = blocking
        self._depth = 0

    @classmethod
    def open(cls, url: str) -> PostgresAdminStore:
        """The database at ``url``, its schema created or upgraded to this relay's."""
        blocking = BlockingConnection(url)
        try:
            blocking.run(lambda conn: migrate(conn, redact(url)))
        except StoreStartError as exc:
            blocking.close()
            raise StoreError(str(exc)) from None
        except Exception as exc:
            blocking.close()
            raise StoreError(f"cannot open the database {redact(url)}: {_reason(exc)}") from None
        return cls(url, blocking)

    def _run(self, work: Callable[[Any], Any]) -> Any:
        return self._blocking.run(work)

    @contextmanager
    def _transaction(self) -> Iterator[object]:
        self._run(lambda conn: conn.execute("SAVEPOINT admin" if self._depth else "BEGIN"))
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth -= 1
            self._run(
                lambda conn: conn.execute(
                    "ROLLBACK TO SAVEPOINT admin" if self._depth else "ROLLBACK"
                )
            )
            raise
        self._depth -= 1
        self._run(lambda conn: conn.execute("RELEASE SAVEPOINT admin" if self._depth else "COMMIT"))

    def transaction(self) -> AbstractContextManager[object]:
        return self._transaction()

    def account(self, handle: str) -> Account | None:
        found: dict[str, Account] = self._run(lambda conn: accounts(conn, [handle]))
        return found.get(handle)

    def badge_serial_taken(self, serial: int) -> bool:
        return bool(
            self._run(lambda conn: conn.fetchval("SELECT 1 FROM badges WHERE serial = $1", serial))
        )

    def add_badge(
        self,
        *,
        serial: int,
        handle: str,
        key_fingerprint: bytes,
        display_name: str,
        issued_at: int,
        expires_at: int,
        signed: bytes,
    ) -> None:
        row = (serial, handle, key_fingerprint, display_name, issued_at, expires_at, signed)
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO badges (serial, handle, key_fingerprint, display_name, issued_at,"
                " expires_at, revoked_at, signed) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)",
                *row,
            )
        )

    def revoke_badges(self, handle: str, now: int) -> int:
        status: str = self._run(
            lambda conn: conn.execute(
                "UPDATE badges SET revoked_at = $1 WHERE handle = $2 AND revoked_at IS NULL",
                *(now, handle),
            )
        )
        return int(status.rsplit(" ", 1)[-1])

    def add_invites(self, digests: Iterable[bytes], now: int) -> None:
        rows = [(digest, now) for digest in digests]
        self._run(
            lambda conn: conn.executemany(
                "INSERT INTO invites (digest, created_at) VALUES ($1, $2)", rows
            )
        )

    def usage(self, business: str | None, month: str | None) -> list[MonthUsage]:
        found: list[MonthUsage] = self._run(lambda conn: usage_months(conn, business, month))
        return found

    def close(self) -> None:
        self._blocking.close()


async def check_schema(conn: Any, url: str) -> None:
    """For read-only callers (inspection): StoreError unless ``url`` holds a blindrelay
    schema this relay can read."""
    found = await schema_version(conn)
    if found is None:
        raise StoreError(f"no blindrelay store in {redact(url)} (no schema_version table)")
    if found > SCHEMA_VERSION:
        raise StoreError(str(newer_schema(found, redact(url))))
