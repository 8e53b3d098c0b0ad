"""Hints between workers over the real PostgreSQL server (server/routing_postgresql.py).

A router hears what another connection commits with ``pg_notify`` on the hint channel —
only once it is committed, never for a rollback — ignores its own worker's hints and
anything that is not a hint sealed by a worker of its store (a role that can only
connect may NOTIFY and LISTEN), and after the server restarts it reconnects by itself
and calls its catch-up.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import msgpack
import pytest

from blindrelay.server.routing import CHANNEL, Hint, HintKind, HintSeal, hint_key
from blindrelay.server.routing_postgresql import PostgresRouter
from blindrelay.server.store import StoreStartError

from ..pg import PostgresDatabase, connect

WAIT_S = 10.0
ME = "aaaaaaaaaaaaaaaa"
OTHER = "bbbbbbbbbbbbbbbb"
SEAL = HintSeal(hint_key(b"\x05" * 32))
"""The store's seal, as every worker derives it from the relay's seed."""


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
    router = PostgresRouter(url, ME, seal=SEAL, **kwargs)
    await router.start(heard.hint, heard.caught_up)
    try:
        yield router, heard
    finally:
        await router.close()


async def notify(conn: object, *payloads: str) -> None:
    for payload in payloads:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)  # type: ignore[attr-defined]


def q(handle: str, origin: str = OTHER) -> str:
    return SEAL.seal(Hint(HintKind.QUEUED, handle, origin))


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
                sender, q("mine", origin=ME), "not a hint", login.encode(),
                SEAL.seal(login), SEAL.seal(withdrawn),
            )  # fmt: skip
            assert await heard.next() == login
            assert await heard.next() == withdrawn
            assert heard.hints.empty()
    finally:
        await sender.close()  # type: ignore[attr-defined]


async def test_a_role_that_can_only_connect_can_neither_forge_nor_read_hints(
    pg_database: PostgresDatabase,
):
    """PostgreSQL checks no privilege for NOTIFY or LISTEN. A role with no right on any
    table NOTIFYs a forged LOGIN (it closed any account's connection) and a forged
    ENVELOPE (it was pushed as a DELIVER and moved the cursor past every real id) —
    found in review; the router drops both. Listening, it hears no handle, id or
    envelope of the real hints."""
    role = f"mallory_{os.urandom(4).hex()}"
    admin = await connect(pg_database.url)
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')  # type: ignore[attr-defined]
    parts = urlsplit(pg_database.url)
    mallory = await connect(urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}")))
    overheard: list[str] = []
    try:
        await mallory.add_listener(CHANNEL, lambda *args: overheard.append(args[3]))  # type: ignore[attr-defined]
        async with listening(pg_database.url) as (_router, heard):
            row = [10**15, "bob", "ceo.bank", "business", b"m" * 16, "chat", None, None, 5, b"X"]
            forged = [
                Hint(HintKind.LOGIN, "carol", OTHER, value=2**40).encode(),
                f"e {OTHER} 0 bob " + base64.b64encode(msgpack.packb(row)).decode(),
                f"{OTHER} " + "A" * 80,
            ]
            await notify(mallory, *forged)
            real = Hint(HintKind.LOGIN, "dave", OTHER, value=7)
            await notify(admin, SEAL.seal(real))
            assert await heard.next() == real  # the forgeries, sent first, were dropped
            assert heard.hints.empty()
            await asyncio.sleep(0.1)
        sealed = [p for p in overheard if p not in forged]
        assert len(sealed) == 1 and "dave" not in sealed[0]
    finally:
        await mallory.close()  # type: ignore[attr-defined]
        await admin.execute(f'DROP ROLE "{role}"')  # type: ignore[attr-defined]
        await admin.close()  # type: ignore[attr-defined]


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
    router = PostgresRouter("postgresql://127.0.0.1:1/none", ME, seal=SEAL, connect_timeout_s=2.0)
    with pytest.raises(StoreStartError) as caught:
        await router.start(lambda _hint: None, lambda: None)
    message = str(caught.value)
    assert message.startswith("cannot LISTEN for other workers' hints: ")
    assert "\n" not in message
    assert not router.connected
