"""The relay signs tree heads of its transparency log (SPEC §15.3), on both back ends."""

from __future__ import annotations

import asyncio

from blindrelay.protocol.transparency import entries, merkle
from blindrelay.protocol.transparency.treehead import check_extends, open_tree_head
from blindrelay.server.config import RelayConfig

from .conftest import ALL_BACKENDS, TEST_TIMEOUT_S, Clients, FakeClock, db_rows, relay_with

BACKENDS = ALL_BACKENDS
NEVER = 3600.0
"""An interval the test never reaches: it publishes by hand."""


async def test_a_head_is_signed_only_when_the_log_grew_and_extends_the_last(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, sth_interval_s=NEVER) as relay:
        assert await relay.housekeeping.publish_tree_head() is None  # an empty log has nothing to sign
        await clients.registered(relay.url, "skyways.air", "business")
        await clients.registered(relay.url, "alice")  # a user: nothing logged
        first = await relay.housekeeping.publish_tree_head()
        assert first is not None and first.size == 1
        assert await relay.housekeeping.publish_tree_head() is None  # nothing new
        clock.advance(1000)
        await clients.registered(relay.url, "trains.rail", "business")
        second = await relay.housekeeping.publish_tree_head()
        assert second is not None and second.size == 2
        older = open_tree_head(first.signed, relay.relay_key)
        newer = open_tree_head(second.signed, relay.relay_key)
        assert newer.timestamp == older.timestamp + 1000
        proof = await relay.ctx.store.submit("log_consistency", 1, 2)
        check_extends(older, newer, proof)
        logged = [entries.decode_entry(d) for d in await relay.ctx.store.submit("log_entries", 0, 9)]
        assert [(e.handle, e.kind) for e in logged] == [  # type: ignore[attr-defined]
            ("skyways.air", "business"), ("trains.rail", "business")
        ]
        assert newer.root == merkle.root_of([e.leaf_hash() for e in logged])


async def test_the_relay_publishes_heads_on_its_own(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    async with relay_with(config, clock, sth_interval_s=0.02) as relay:
        await clients.registered(relay.url, "skyways.air", "business")
        async with asyncio.timeout(TEST_TIMEOUT_S):
            while not db_rows(config, "SELECT size FROM log_heads"):
                await asyncio.sleep(0.01)
        [(size, signed)] = db_rows(config, "SELECT size, signed FROM log_heads")
        assert size == 1 and open_tree_head(bytes(signed), relay.relay_key).size == 1
