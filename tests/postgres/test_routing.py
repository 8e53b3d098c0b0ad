"""Hints between workers over the real PostgreSQL server (server/routing_postgresql.py).

A router hears what another connection commits with ``pg_notify`` on the hint channel —
only once it is committed, never for a rollback — ignores its own worker's hints and
anything that is not a hint, and after the server restarts it reconnects by itself and
calls its catch-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from blindrelay.server.routing import CHANNEL, Hint, HintKind
from blindrelay.server.routing_postgresql import PostgresRouter
from blindrelay.server.store import StoreStartError

from ..pg import PostgresDatabase, connect

WAIT_S = 10.0
ME = "aaaaaaaaaaaaaaaa"
OTHER = "bbbbbbbbbbbbbbbb"


class Heard:
    """What a router called back with, awaitable."""

    def __init__(self) -> None:
        self.hints: asyncio.Queue[Hint] = asyncio.Queue()
        self.connections = 0
        self.connected = asyncio.Event()

    def hint(self, hint: Hint) -> None:
        self.hints.put_nowait(hint)

    def caught_up(self) -> None:
        self.connections += 1
        self.connected.set()

    async def next(self) -> Hint:
        return await asyncio.wait_for(self.hints.get(), WAIT_S)


@asynccontextmanager
async def listening(url: str, **kwargs: float) -> AsyncIterator[tuple[PostgresRouter, Heard]]:
    heard = Heard()
    router = PostgresRouter(url, ME, **kwargs)
    await router.start(heard.hint, heard.caught_up)
    try:
        yield router, heard
    finally:
        await router.close()


async def notify(conn: object, *payloads: str) -> None:
    for payload in payloads:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)  # type: ignore[attr-defined]


def q(handle: str, origin: str = OTHER) -> str:
    return Hint(HintKind.QUEUED, handle, origin).encode()


async def test_a_committed_hint_is_heard_only_after_its_commit(pg_database: PostgresDatabase):
    sender = await connect(pg_database.url)
    marker = await connect(pg_database.url)
    try:
        async with listening(pg_database.url) as (router, heard):
            assert router.connected and heard.connections == 1
            async with sender.transaction():  # type: ignore[attr-defined]
                await notify(sender, q("in_flight"))
                # Committed after the hint was issued, before its transaction commits:
                # had the first been delivered early, it would be heard before this one.
                await notify(marker, q("marker"))
                assert (await heard.next()).handle == "marker"
                assert heard.hints.empty()
            assert await heard.next() == Hint(HintKind.QUEUED, "in_flight", OTHER)
    finally:
        await sender.close()  # type: ignore[attr-defined]
        await marker.close()  # type: ignore[attr-defined]


async def test_a_rolled_back_hint_is_never_heard(pg_database: PostgresDatabase):
    sender = await connect(pg_database.url)
    try:
        async with listening(pg_database.url) as (_router, heard):
            transaction = sender.transaction()  # type: ignore[attr-defined]
            await transaction.start()
            await notify(sender, q("rolled_back"))
            await transaction.rollback()
            await notify(sender, q("after"))
            # One sender's notifications arrive in commit order: the rolled-back one
            # would come first.
            assert (await heard.next()).handle == "after"
            assert heard.hints.empty()
    finally:
        await sender.close()  # type: ignore[attr-defined]


async def test_own_hints_and_strangers_on_the_channel_are_ignored(pg_database: PostgresDatabase):
    sender = await connect(pg_database.url)
    try:
        async with listening(pg_database.url) as (_router, heard):
            login = Hint(HintKind.LOGIN, "carol", OTHER, value=3)
            withdrawn = Hint(HintKind.WITHDRAWN, "dave", OTHER, ids=(5, 6))
            await notify(
                sender, q("mine", origin=ME), "not a hint", login.encode(), withdrawn.encode()
            )
            assert await heard.next() == login
            assert await heard.next() == withdrawn
            assert heard.hints.empty()
    finally:
        await sender.close()  # type: ignore[attr-defined]


async def test_the_router_uses_a_connection_of_its_own(pg_database: PostgresDatabase):
    probe = await connect(pg_database.url)
    try:
        async with listening(pg_database.url):
            rows = await probe.fetch(  # type: ignore[attr-defined]
                "SELECT query FROM pg_stat_activity WHERE application_name = 'blindrelay-listen'"
                " AND datname = current_database()"
            )
            assert [row["query"] for row in rows] == [f'LISTEN "{CHANNEL}"']
    finally:
        await probe.close()  # type: ignore[attr-defined]


async def test_after_a_restart_the_router_reconnects_and_catches_up(
    pg_database: PostgresDatabase,
):
    async with listening(pg_database.url, retry_initial_s=0.01, retry_max_s=0.2) as (
        router,
        heard,
    ):
        heard.connected.clear()
        await pg_database.restart_async()
        # Back by itself (capped backoff), and it said so: the relay catches up then.
        await asyncio.wait_for(heard.connected.wait(), WAIT_S)
        assert router.connected
        assert heard.connections == 2 and router.connections == 2
        sender = await connect(pg_database.url)
        try:
            await notify(sender, q("after_restart"))
            assert (await heard.next()).handle == "after_restart"
        finally:
            await sender.close()  # type: ignore[attr-defined]
    assert not router.connected


async def test_no_server_at_start_is_one_line() -> None:
    router = PostgresRouter("postgresql://127.0.0.1:1/none", ME, connect_timeout_s=2.0)
    with pytest.raises(StoreStartError) as caught:
        await router.start(lambda _hint: None, lambda: None)
    message = str(caught.value)
    assert message.startswith("cannot LISTEN for other workers' hints: ")
    assert "\n" not in message
    assert not router.connected
