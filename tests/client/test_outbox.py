"""The outbox (client/outbox.py): an envelope persisted before it is sent, sent again
until the relay's SENT, then retired (SPEC §6.3).

Unit tests drive a :class:`Client` over the in-memory relay of :mod:`.fake_relay`,
which shows each SEND the client wrote and answers as the test says; the rest
against a real relay on 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from blindrelay.client.keystore import (
    MemoryKeyStore,
)
from blindrelay.client.sdk import Client, ConnectionLost
from blindrelay.server import relay as relay_module
from blindrelay.server.config import RelayConfig
from blindrelay.server.store import open_store

from ..relays import relay_at
from .harness import (
    FAST,
    LOW_COST,
    Inbox,
    OutageStore,
    back_online,
    online,
    run,
    within,
)

# --- Against a real relay ---------------------------------------------------------------


def test_a_send_made_while_disconnected_completes_after_the_reconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            bob = await online(relay.url, "bob")
            reconnected = asyncio.Event()
            alice = await online(relay.url, "alice", on_connected=lambda w: reconnected.set())
            reconnected.clear()
            await within(alice.send("bob", "first"))  # session exists: no bundle needed below

            session = relay.ctx.sessions.get("alice")
            assert session is not None
            session.transport.close(1011, "test drop")
            sending = asyncio.create_task(alice.send("bob", "queued in the outbox"))
            await within(reconnected.wait())
            msg_id = await within(sending)

            inbox = Inbox(bob)
            assert (await inbox.next()).body == "first"
            got = await inbox.next()
            assert (got.body, got.msg_id) == ("queued in the outbox", msg_id)
            await inbox.close()
            await bob.close()
            await alice.close()

    run(scenario())


def test_a_send_refused_by_a_store_outage_is_sent_again_and_arrives_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6.3 (issue 14): ERROR 902 means "not answered, perhaps stored": the SDK
    keeps the message and sends the same msg_id again after retry_after on the same
    connection, and the recipient gets it exactly once."""
    stores: list[OutageStore] = []

    def open_with_outage(url: str, config: RelayConfig) -> Any:
        stores.append(OutageStore(open_store(url, config), outages=3))
        return stores[-1]

    monkeypatch.setattr(relay_module, "open_store", open_with_outage)

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            first = await within(alice.send("bob", "through the outage"))
            assert stores[0].refused == 3
            second = await within(alice.send("bob", "after it"))
            inbox = Inbox(bob)
            received = [await inbox.next(), await inbox.next()]
            assert [m.msg_id for m in received] == [first, second]
            assert [m.body for m in received] == ["through the outage", "after it"]
            with pytest.raises(TimeoutError):  # the first, committed twice, came once
                await asyncio.wait_for(inbox.next(), 0.3)
            for closing in (inbox, alice, bob):
                await closing.close()

    run(scenario())


def test_an_unacknowledged_send_survives_a_restart_of_both_sides(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "alice.keys"
        async with relay_at(tmp_path) as relay:
            bob_store = MemoryKeyStore()
            bob = await online(relay.url, "bob", store=bob_store)
            await bob.close()
            alice = Client.open(path, "pw", backoff=FAST, **LOW_COST)
            await within(alice.connect(relay.url))
            await within(alice.register("alice"))
            await within(alice.send("bob", "first"))
        # The relay is gone: the next send can only reach alice's outbox.
        sending = asyncio.create_task(alice.send("bob", "kept in the outbox"))
        await asyncio.sleep(0)  # one scheduling step: encrypt and persist, then await SENT
        await alice.close()
        with pytest.raises(ConnectionLost):
            await within(sending)

        async with relay_at(tmp_path) as relay:  # same database, new port
            alice = Client.open(path, "pw", backoff=FAST)
            await within(alice.connect(relay.url))
            await within(alice.login())
            bob = await back_online(relay.url, bob_store)
            inbox = Inbox(bob)
            assert [(await inbox.next()).body for _ in range(2)] == ["first", "kept in the outbox"]
            await inbox.close()
            await bob.close()
            await alice.close()

    run(scenario())
