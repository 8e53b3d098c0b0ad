"""What a relay does with another worker's hints (server/dispatch.py, SPEC §1.2.3, §5.4,
§6.4, §7.4), on one SQLite relay: the hints are handed to it as its router would, and
"another worker's commit" is an operation submitted to the store behind the sessions'
backs. The same paths between two real workers on PostgreSQL: tests/server/test_workers.py.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from blindrelay.protocol.errors import ErrorCode, StoreUnavailable
from blindrelay.protocol.frames import Ack, Deliver, Error, PrekeysLow, Sent, StatementsList
from blindrelay.server import relay as relay_module
from blindrelay.server.config import RelayConfig
from blindrelay.server.context import CLOSE_STORE_FAILED
from blindrelay.server.delivery import send_rules
from blindrelay.server.relay import RunningRelay
from blindrelay.server.routing import Hint, HintKind
from blindrelay.server.store import StoreJobError, open_store

from .conftest import Clients, FakeClock, RelayFixture

ELSEWHERE = "ffffffffffffffff"


def hint(kind: HintKind, handle: str, value: int = 0, ids: tuple[int, ...] = ()) -> Hint:
    return Hint(kind, handle, ELSEWHERE, value, ids)


async def commit_elsewhere(relay: RunningRelay, sender: str, to: str, body: bytes) -> int:
    """An envelope committed without any session here hearing of it, as another
    worker's SEND would be; its delivery id."""
    ctx = relay.ctx
    result = await ctx.store.submit(
        "send", sender, "user", to, os.urandom(16), "chat", None, None, body, ctx.clock(),
        send_rules(ctx.config),
    )  # fmt: skip
    delivery_id: int = result[0]
    return delivery_id


async def still_open(client: Any) -> bool:
    """A request answered: the connection is open (and everything before it was handled)."""
    return not isinstance(await client.request(lambda i: StatementsList(id=i, after=0)), Error)


async def test_queued_pages_in_what_another_worker_committed(
    relay: RunningRelay, clients: Clients
) -> None:
    await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    delivery_id = await commit_elsewhere(relay, "alice", "bob", b"from afar")
    relay.hint_received(hint(HintKind.QUEUED, "bob"))
    deliver = await bob.push(Deliver)
    assert (deliver.delivery_id, deliver.body) == (delivery_id, b"from afar")


async def test_queued_while_a_page_is_read_pages_again_after_it(
    relay: RunningRelay, clients: Clients
) -> None:
    """A hint has no order with this store's answers: a page being read when it comes
    may have been read before the rows it announces were committed."""
    await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert await still_open(bob)  # its first page is done
    outbox = relay.ctx.sessions.get("bob").outbox  # type: ignore[union-attr]
    assert outbox is not None and not outbox.paging
    relay.hint_received(hint(HintKind.QUEUED, "bob"))  # a page goes out …
    assert outbox.paging
    committed = commit_elsewhere(relay, "alice", "bob", b"after the read")  # … then this
    relay.hint_received(hint(HintKind.QUEUED, "bob"))  # while that page is read
    delivery_id = await committed
    deliver = await bob.push(Deliver)
    assert (deliver.delivery_id, deliver.body) == (delivery_id, b"after the read")


async def test_withdrawn_drops_what_is_in_flight_and_frees_the_window(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    """SPEC §7.4: a statement committed on another worker purged rows this outbox has
    in flight: they are no longer counted, so what waits behind them comes at once."""
    async with RelayFixture(replace(config, delivery_window=1), clock) as relay:
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        for body in (b"purged", b"kept"):
            assert isinstance(await alice.send_message("bob", body), Sent)
        first = await bob.push(Deliver)
        assert first.body == b"purged"  # in flight, unacknowledged: the window is full
        relay.hint_received(hint(HintKind.WITHDRAWN, "bob", ids=(first.delivery_id,)))
        assert (await bob.push(Deliver)).body == b"kept"  # no ACK needed


async def test_withdrawn_ids_a_page_brings_later_are_never_pushed(
    relay: RunningRelay, clients: Clients
) -> None:
    await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert await still_open(bob)
    withdrawn = await commit_elsewhere(relay, "alice", "bob", b"withdrawn")
    kept = await commit_elsewhere(relay, "alice", "bob", b"kept")
    # Both rows are still in the table (the statement that purged one is not simulated),
    # as for a page read before that statement committed: what the outbox was told is
    # what keeps it from pushing one.
    relay.hint_received(hint(HintKind.WITHDRAWN, "bob", ids=(withdrawn,)))
    relay.hint_received(hint(HintKind.QUEUED, "bob"))
    deliver = await bob.push(Deliver)
    assert (deliver.delivery_id, deliver.body) == (kept, b"kept")


async def test_a_newer_login_elsewhere_replaces_the_connection_here(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    await alice.close()
    again, _ = await clients.logged_in(relay.url, "alice", alice.key)  # login 1
    relay.hint_received(hint(HintKind.LOGIN, "alice", value=1))  # not newer: ignored
    relay.hint_received(hint(HintKind.LOGIN, "bob", value=7))  # nobody here: nothing
    assert await still_open(again)
    relay.hint_received(hint(HintKind.LOGIN, "alice", value=2))
    assert await again.closed() == 4000
    assert again.ws.close_reason == "replaced"


async def test_a_login_here_older_than_one_heard_from_elsewhere_is_replaced(
    relay: RunningRelay, clients: Clients
) -> None:
    """The other worker's login committed after this one, but its hint came before this
    one's answer: the connection here is the older one and must not stay."""
    alice = await clients.registered(relay.url, "alice")
    await alice.close()
    relay.hint_received(hint(HintKind.LOGIN, "alice", value=5))
    late, _ = await clients.logged_in(relay.url, "alice", alice.key)  # login 1 < 5
    assert await late.closed() == 4000
    assert relay.ctx.sessions.get("alice") is None


async def test_a_registration_is_replaced_by_any_login_elsewhere(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    relay.hint_received(hint(HintKind.LOGIN, "alice", value=1))
    assert await alice.closed() == 4000


async def test_prekeys_low_reaches_the_owner_connected_here(
    relay: RunningRelay, clients: Clients
) -> None:
    bob = await clients.registered(relay.url, "bob")
    relay.hint_received(hint(HintKind.PREKEYS_LOW, "bob", value=3))
    relay.hint_received(hint(HintKind.PREKEYS_LOW, "carol", value=0))  # not here
    assert (await bob.push(PrekeysLow)).remaining == 3


async def test_catch_up_pages_every_outbox(relay: RunningRelay, clients: Clients) -> None:
    """After the router or the store reconnects, hints of the meantime are lost: the
    tables are the truth."""
    await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    carol = await clients.registered(relay.url, "carol")
    for client in (bob, carol):
        assert await still_open(client)
    await commit_elsewhere(relay, "alice", "bob", b"for bob")
    await commit_elsewhere(relay, "alice", "carol", b"for carol")
    relay.store_available(True)
    assert (await bob.push(Deliver)).body == b"for bob"
    assert (await carol.push(Deliver)).body == b"for carol"


class OutageStore:
    """The relay's real store, but its pages fail as during an outage of a shared store
    (SPEC §6.3) until ``back`` is set; with ``failure``, with that instead."""

    def __init__(self, store: Any, failure: Exception | None = None) -> None:
        self.store = store
        self.back = False
        self.failure = failure or StoreUnavailable()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def call(self, operation: str, args: Any, done: Any, decided: Any = None) -> None:
        if operation == "page" and not self.back:
            self.store.call(operation, args, lambda ok, value: done(False, self.failure))
            return
        self.store.call(operation, args, done, decided)


async def test_a_page_lost_to_an_outage_is_nobody_s_error_and_comes_after_it(
    config: RelayConfig, clock: FakeClock, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores: list[OutageStore] = []

    def opened(url: str, cfg: RelayConfig) -> Any:
        stores.append(OutageStore(open_store(url, cfg)))
        return stores[-1]

    monkeypatch.setattr(relay_module, "open_store", opened)
    async with RelayFixture(config, clock) as relay:
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        assert isinstance(await alice.send_message("bob", b"waits"), Sent)
        relay.hint_received(hint(HintKind.QUEUED, "bob"))  # its page fails too
        assert await still_open(bob)
        stores[0].back = True
        relay.store_available(True)
        deliver = await bob.push(Deliver)
        assert deliver.body == b"waits"
        await bob.send(Ack(delivery_ids=(deliver.delivery_id,)))
        assert await still_open(bob)
        assert not [frame for frame in bob.inbox if isinstance(frame, Error)]


async def test_a_page_that_fails_otherwise_closes_the_connection_and_the_next_login_pages(
    config: RelayConfig, clock: FakeClock, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed read of the queue that is no outage (a SQLite read error) got an ERROR
    and nothing more: the connection stayed behind with nothing to page it again, and
    new envelopes waited for an ACK or a reconnect (found in review). Now it closes with
    1011 ``store failed`` after the ERROR, and the next login pages."""
    stores: list[OutageStore] = []

    def opened(url: str, cfg: RelayConfig) -> Any:
        stores.append(OutageStore(open_store(url, cfg), StoreJobError("OSError", "queue.py:1")))
        return stores[-1]

    monkeypatch.setattr(relay_module, "open_store", opened)
    async with RelayFixture(config, clock) as relay:
        stores[0].back = True
        alice = await clients.registered(relay.url, "alice")
        bob = await clients.registered(relay.url, "bob")
        stores[0].back = False
        relay.hint_received(hint(HintKind.QUEUED, "bob"))  # its page fails
        assert await bob.closed() == CLOSE_STORE_FAILED
        assert [f.code for f in bob.inbox if isinstance(f, Error)] == [ErrorCode.INTERNAL_ERROR]
        assert isinstance(await alice.send_message("bob", b"after the failure"), Sent)
        stores[0].back = True
        again = await clients.open(relay.url)
        await again.login("bob", bob.key)
        assert (await again.push(Deliver)).body == b"after the failure"

