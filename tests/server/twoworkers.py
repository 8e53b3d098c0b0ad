"""Two relay workers on one PostgreSQL database, in this process: the fixture of
tests/server/test_workers.py and tests/server/test_links.py (issue 14)."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

from blindrelay.protocol.frames import Error, StatementsList
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay, serve

from ..asyncrun import AsyncFixture
from ..pg import PostgresDatabase
from .conftest import MANY_REGISTRATIONS, FakeClock, RawClient

PROMPT_S = 1.0
"""How soon a change committed on one worker must reach a connection on the other."""
QUIET_S = 0.5
"""How long a worker that hears no hints is watched for deliveries it could only have
found by polling."""
FAR = 3600.0
"""The relay's own periodic work (purge, checkpoint) is this far apart in these tests."""


def handle(name: str) -> str:
    """A handle of its own per test: the module's tests share one database."""
    return f"{name}{secrets.token_hex(4)}"


def worker_config(url: str, **changes: Any) -> RelayConfig:
    base = RelayConfig(host="127.0.0.1", port=0, store=url, **MANY_REGISTRATIONS)
    return replace(base, purge_interval_s=FAR, checkpoint_interval_s=FAR, **changes)


class Workers(AsyncFixture):
    """Worker A and worker B on one database; ``changes_a`` apply to A only."""

    def __init__(self, url: str, clock: FakeClock, **changes_a: Any) -> None:
        self.url = url
        self.clock = clock
        self.changes_a = changes_a
        self.a: RunningRelay
        self.b: RunningRelay

    async def __aenter__(self) -> Workers:
        self.a = await serve(worker_config(self.url, **self.changes_a), clock=self.clock)
        try:
            self.b = await serve(worker_config(self.url), clock=self.clock)
        except BaseException:
            await self.a.close()
            raise
        assert self.a.router.worker_id != self.b.router.worker_id
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.b.close()
        await self.a.close()


def workers(pg_database: PostgresDatabase, clock: FakeClock, **changes_a: Any) -> Workers:
    return Workers(pg_database.url, clock, **changes_a)


async def answered(client: RawClient) -> None:
    """A round trip on ``client``'s connection: everything before it was handled."""
    assert not isinstance(await client.request(lambda i: StatementsList(id=i)), Error)
