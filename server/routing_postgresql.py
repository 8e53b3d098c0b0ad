"""Hints between workers over PostgreSQL: ``LISTEN blindrelay_hints`` (:mod:`.routing`).

Each worker holds one connection of its own for ``LISTEN`` — not one of the store's
pool, whose connections come and go with batches — and asyncpg calls back on the
event loop for every ``NOTIFY``. The store issues its ``pg_notify`` inside the
transaction that commits the change, and PostgreSQL delivers a notification only
after that ``COMMIT`` (never for a rollback), so a hint never arrives before what it
announces can be read. Nothing here polls: the connection waits for the server.

When the connection is lost (a database restart, a network fault) the router
reconnects with capped exponential backoff (:func:`.routing.backoff`), and after
every connection it calls ``on_connected``: whatever was committed meanwhile was
announced to nobody here, and the relay catches up from the tables.

asyncpg is imported only when a router starts: the embedded SQLite relay never
loads it.

Not here: the hint vocabulary (``routing``), what the relay does with hints
(``dispatch``), the store's own connections (``store/postgresql``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .logs import RefusalLog, log_event
from .ratelimit import wall_clock_ms
from .routing import CHANNEL, EnvelopeLinks, HintSeal, OnHint, backoff, origin_of
from .store import StoreStartError

if TYPE_CHECKING:
    from .routing_links import PeerLinks

CONNECT_TIMEOUT_S = 10.0
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 2.0
"""A restarted database is heard again at most this long after it accepts connections."""
APPLICATION_NAME = "blindrelay-listen"
"""How the connection shows in ``pg_stat_activity``."""


def _nothing() -> None:
    return None


class PostgresRouter:
    """``LISTEN`` on a dedicated connection, reconnecting by itself."""

    def __init__(
        self,
        url: str,
        worker_id: str,
        *,
        seal: HintSeal,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        links: PeerLinks | None = None,
    ) -> None:
        self._url = url
        self._seal = seal
        self._links = links
        self._worker_id = worker_id
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._connect_timeout_s = connect_timeout_s
        self._conn: Any = None  # asyncpg.Connection, typed loosely: asyncpg is imported late
        self._on_hint: OnHint = _ignore
        self._on_connected: Callable[[], None] = _nothing
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self.connections = 0
        """How many times a connection was made (1 after :meth:`start`): for tests and logs."""
        self.bad_hints = 0
        """Payloads heard that no worker of this store sealed (dropped)."""
        self._bad_hint_log = RefusalLog(wall_clock_ms)
        """Where they are logged, within a budget: any role that can connect may NOTIFY,
        and a line for each let it write every worker's log as fast as it notified (T65)."""

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def envelope_links(self) -> EnvelopeLinks | None:
        """The peer links (``routing_links``) new envelopes take, if this worker has them."""
        return self._links

    async def start(self, on_hint: OnHint, on_connected: Callable[[], None]) -> None:
        """Connect and ``LISTEN`` before returning, so the relay hears every hint
        committed from then on; StoreStartError (one line) if it cannot."""
        self._on_hint = on_hint
        self._on_connected = on_connected
        try:
            await self._connect()
        except Exception as exc:
            raise StoreStartError(
                f"cannot LISTEN for other workers' hints: {_reason(exc)}"
            ) from None
        if self._links is not None:
            try:
                await self._links.start(on_hint, on_connected)
            except Exception as exc:
                await self.close()
                raise StoreStartError(
                    f"cannot open peer links on {self._links.host}: {_reason(exc)}"
                ) from None
        self._on_connected()

    async def close(self) -> None:
        self._closed = True
        if self._links is not None:
            await self._links.close()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
            self._reconnecting = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                await conn.close(timeout=self._connect_timeout_s)

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(
            self._url,
            timeout=self._connect_timeout_s,
            server_settings={"application_name": APPLICATION_NAME},
        )
        # Before LISTEN, so a loss at any moment from here on is heard (_terminated).
        conn.add_termination_listener(self._terminated)
        try:
            await conn.add_listener(CHANNEL, self._notified)
            if conn.is_closed():
                raise ConnectionError("connection closed while starting to listen")
        except BaseException:
            conn.terminate()
            raise
        if self._closed:  # closed while connecting
            conn.terminate()
            return
        self._conn = conn
        self.connections += 1
        log_event(logging.INFO, "router_listening", channel=CHANNEL, connections=self.connections)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if origin_of(payload) == self._worker_id:
            return  # acted on locally when it was committed
        try:
            hint = self._seal.open(payload)
        except ValueError:
            # Not a hint sealed by a worker of this store (a role that can connect may
            # NOTIFY anything, routing's docstring): nothing to act on; its size only,
            # within the log's budget (the lines past it counted on the next one).
            self.bad_hints += 1
            self._bad_hint_log.log(logging.WARNING, "router_bad_hint", size=len(payload))
            return
        self._on_hint(hint)

    def _terminated(self, conn: object) -> None:
        if conn is not self._conn or self._closed:
            return  # one that never served, or closed on purpose
        self._conn = None
        log_event(logging.WARNING, "router_lost", channel=CHANNEL)
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        for delay in backoff(self._retry_initial_s, self._retry_max_s):
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except Exception as exc:  # the server is still down or starting
                log_event(logging.INFO, "router_retry", exc_type=type(exc).__name__)
                continue
            if self.connected:
                self._on_connected()  # outside the try: its errors are not the server's
            return


def _ignore(_hint: object) -> None:
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
