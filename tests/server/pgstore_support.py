"""What the PostgreSQL back end's tests share (test_pgstore*.py): a started store with
the relay's hint seal, SENDs with the default rules, and reads of what it holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.routing import Hint, HintSeal, hint_key
from blindrelay.server.store import Account
from blindrelay.server.store.postgresql.store import PostgresStore

RULES = send_rules(RelayConfig())

SEAL = HintSeal(hint_key(b"\x07" * 32))
"""The hint seal of these tests' stores, as a relay sets its own (``routing``)."""


def heard_by(heard: asyncio.Queue[Hint]) -> Callable[..., None]:
    """A LISTEN callback that opens each sealed hint into ``heard``."""
    return lambda *args: heard.put_nowait(SEAL.open(args[3]))


@asynccontextmanager
async def started(url: str, **kwargs: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, **kwargs)
    store.hint_seal = SEAL
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def users(store: PostgresStore, *handles: str) -> None:
    for handle in handles:
        await store.submit("create_account", handle, "user", handle.encode().ljust(32, b"."), 0)


def send_chat(
    store: PostgresStore, sender: str, to: str, n: int, **changes: Any
) -> asyncio.Future[Any]:
    rules = RULES._replace(**{"message_request_max": 10**6, **changes})
    msg_id = n.to_bytes(16, "big")
    return store.submit("send", sender, "user", to, msg_id, "chat", None, None, b"x", 5, rules)


async def account_of(store: PostgresStore, handle: str) -> Account | None:
    """The loop's read of an account, awaited."""
    answer: asyncio.Future[Account | None] = asyncio.get_running_loop().create_future()
    store.read("account", [handle], lambda ok, value: answer.set_result(value))
    return await answer


async def counts(url: str, handle: str) -> tuple[int, int]:
    """(envelopes queued as the cap counts them, rows in the queue) for ``handle``."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT queued FROM queue_counts WHERE handle = $1)"
            " - (SELECT acked FROM queue_acks WHERE handle = $1),"
            " (SELECT count(*) FROM queue WHERE recipient = $1 AND intent <> 'statement')",
            handle,
        )
        return int(row[0]), int(row[1])
    finally:
        await conn.close()
