"""asyncpg for the operator's synchronous commands: one connection on a private loop.

``blindrelay admin`` and ``inspect`` are synchronous, and asyncpg speaks only asyncio.
``asyncio.run`` per statement would cost a loop and a connection each time and could
not keep a transaction open across calls; so a :class:`SyncConnection` owns one event
loop, running in a daemon thread of its own, and one connection on it, and
:meth:`~SyncConnection.run` blocks its caller until a coroutine there is done. The
thread also makes it usable from code that already runs an event loop (a test).

Every failure a caller can meet becomes :class:`~..StoreError` with one line saying
what is wrong and what to do (:func:`failure`); the URL is shown without its password.

Not here: the relay's store, which never blocks its loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from .. import StoreError, redact

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
"""Connecting and authenticating; an unreachable host fails after this."""
CLOSE_TIMEOUT_S = 5.0
LOST = (
    asyncpg.PostgresConnectionError,  # class 08, and asyncpg's own "connection lost"
    asyncpg.AdminShutdownError,  # 57P01: the server shut down, or ended this session
    asyncpg.CrashShutdownError,  # 57P02
    ConnectionError,
)
"""Failures meaning the connection is gone (whatever the statement was)."""
SERVER_SETTINGS = {"synchronous_commit": "on", "application_name": "blindrelay admin"}
"""``synchronous_commit=on`` whatever the server's default: what a command prints
(an invite token) is on disk first."""


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def failure(exc: BaseException, url: str) -> StoreError:
    """One line for the operator: what went wrong with the database at ``url`` and
    what to do about it."""
    where = redact(url)
    reason = _reason(exc)
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StoreError(
            f"{where}: {reason}: create it (CREATE DATABASE) or name an existing database"
        )
    refused = asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
    if isinstance(exc, refused):
        return StoreError(
            f"{where}: the server refused the login: {reason}: check the user and password "
            "in the URL (or PGPASSWORD, ~/.pgpass) and the server's pg_hba.conf"
        )
    if isinstance(exc, socket.gaierror):
        return StoreError(f"{where}: unknown host ({reason}): check the host in the URL")
    if isinstance(exc, OSError | TimeoutError | asyncpg.CannotConnectNowError):
        return StoreError(
            f"cannot reach the PostgreSQL server of {where}: {reason}: "
            "is it running, and are the URL's host and port right?"
        )
    if isinstance(exc, ValueError | asyncpg.ClientConfigurationError):
        return StoreError(f"{where}: not a usable PostgreSQL URL: {reason}")
    return StoreError(f"the database {where}: {reason}")


class SyncConnection:
    """One asyncpg connection on a private event loop; :meth:`run` waits for its work."""

    def __init__(self, url: str) -> None:
        """Not connected yet: use :meth:`open`."""
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="blindrelay-postgresql-admin", daemon=True
        )
        self._thread.start()
        self._conn: Any = None

    @classmethod
    def open(cls, url: str) -> SyncConnection:
        """Connected to ``url``, or :class:`StoreError` (one line)."""
        connection = cls(url)
        try:
            connection._conn = connection._wait(
                lambda: asyncpg.connect(
                    url, timeout=CONNECT_TIMEOUT_S, server_settings=SERVER_SETTINGS
                )
            )
        except BaseException as exc:
            connection.close()
            if isinstance(exc, Exception):
                raise failure(exc, url) from None
            raise
        return connection

    def _wait(self, work: Callable[[], Awaitable[T]]) -> T:
        async def on_the_loop() -> T:
            return await work()  # the awaitable is made on the loop's thread too

        return asyncio.run_coroutine_threadsafe(on_the_loop(), self._loop).result()

    def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``await work(connection)`` on the private loop: its result, or its failure as
        :class:`StoreError` (one line)."""
        try:
            return self._wait(lambda: work(self._conn))
        except StoreError:
            raise
        except Exception as exc:
            if self._conn.is_closed() or isinstance(exc, LOST):
                raise StoreError(
                    f"lost the connection to {redact(self.url)} ({_reason(exc)}): "
                    "run the command again once the server answers"
                ) from None
            raise failure(exc, self.url) from None

    def close(self) -> None:
        """Close the connection (if still open) and stop the loop; never raises."""

        async def close() -> None:
            if self._conn is not None and not self._conn.is_closed():
                try:
                    await self._conn.close(timeout=CLOSE_TIMEOUT_S)
                except Exception:  # a broken connection: drop it
                    self._conn.terminate()

        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
