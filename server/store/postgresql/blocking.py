"""asyncpg for synchronous callers: a private event loop on a thread of its own.

The operator's commands (``blindrelay admin``) are synchronous, and may run inside a
program that already has an event loop (a test); asyncpg only speaks asyncio. So a
:class:`BlockingConnection` runs one asyncpg connection on its own loop in a daemon
thread, and :meth:`~BlockingConnection.run` blocks the caller until a coroutine on it
is done. It reconnects on the next call after the connection was lost.

Not here: the relay's store, which never blocks its loop (``store``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
SERVER_SETTINGS = {"synchronous_commit": "on", "application_name": "blindrelay"}


class BlockingConnection:
    """One asyncpg connection on a private loop; :meth:`run` waits for its work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="blindrelay-postgresql", daemon=True
        )
        self._thread.start()
        self._conn: Any = None

    def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``await work(connection)`` on the private loop; its result or exception."""
        return asyncio.run_coroutine_threadsafe(self._run(work), self._loop).result()

    async def _run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.url, timeout=CONNECT_TIMEOUT_S, server_settings=SERVER_SETTINGS
            )
        return await work(self._conn)

    def close(self) -> None:
        async def close() -> None:
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.close(timeout=CONNECT_TIMEOUT_S)

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        except Exception:  # noqa: S110 - closing after a failure: nothing more to do
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
