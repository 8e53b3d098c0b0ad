"""The outbox (client/outbox.py): an envelope persisted before it is sent, sent again
until the relay's SENT, then retired (SPEC §6.3).

Unit tests drive a :class:`Client` over the in-memory relay of :mod:`.fake_relay`,
which shows each SEND the client wrote and answers as the test says; the rest
against a real relay on 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client, ConnectionLost
from blindrelay.protocol import frames
from blindrelay.protocol.errors import (
    InternalError,
    ProtocolError,
    RateLimited,
    RecipientUnavailable,
    ShuttingDown,
    StoreUnavailable,
)

from ..relays import FakeClock, relay_at
from .fake_relay import URL, FakeRelay, RelayEnd, answer_plainly, answer_sent
from .harness import (
    FAST,
    LOW_COST,
    Inbox,
    back_online,
    online,
    run,
    session_with,
    store_outage,
    within,
)

BOB = b"\x55" * 32
"""Bob's identity seed: alice's session with him is started from a bundle made here."""


class Relay(FakeRelay):
    """The in-memory relay; SENDs go to :attr:`on_send` (default: SENT at once), and
    :attr:`outbox_at_send` notes alice's outbox as each SEND reaches the relay."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = self.answering
        self.on_send: Callable[[RelayEnd, frames.Send], None] = answer_sent
        self.outbox_at_send: list[list[bytes]] = []
        self.store = MemoryKeyStore()

    def answering(self, end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Send):
            self.outbox_at_send.append([entry.msg_id for entry in self.store.outbox()])
            self.on_send(end, frame)
        else:
            answer_plainly(end, frame)

    async def alice(self, **options: Any) -> Client:
        client = await online(URL, "alice", store=self.store, open_transport=self.open, **options)
        session_with(client, "bob", BOB)
        return client


def held(end: RelayEnd, send: frames.Send) -> None:
    """No answer: the send stays unanswered."""


def refusing(*errors: ProtocolError) -> Callable[[RelayEnd, frames.Send], None]:
    """Answer the first SENDs with ``errors``, in turn; SENT afterwards."""
    left = list(errors)

    def answer(end: RelayEnd, send: frames.Send) -> None:
        if left:
            end.refuse(left.pop(0), re=send.id)
        else:
            answer_sent(end, send)

    return answer


async def test_an_envelope_is_persisted_before_its_send_is_written() -> None:
    relay = Relay()
    alice = await relay.alice()
    msg_id = await within(alice.send("bob", "hello"))
    assert relay.outbox_at_send == [[msg_id]]
    await alice.close()


async def test_a_msg_id_begins_with_the_clock_and_ends_with_random_bits() -> None:
    """SPEC §6.1.1: the SDK's ids are the relay's clock as it estimates it, in ms (6
    bytes, big-endian), so a relay's idempotence memory grows at one end, then 80 random
    bits — for one message and for each recipient of a bulk send alike. Its own clock,
    an hour behind, shows nowhere."""
    relay = Relay()
    relay.clock.now = 0x018C34B31200  # 2023-12-04T12:00:00Z
    clock = FakeClock(relay.clock.now - 3_600_000)
    alice = await online(URL, "alice", store=relay.store, open_transport=relay.open, clock=clock)
    session_with(alice, "bob", BOB)
    one = await within(alice.send("bob", "one"))
    [(_, two), (_, three)] = await within(alice.send_many(["bob", "bob"], "two and three"))
    assert isinstance(two, bytes) and isinstance(three, bytes)
    assert {one[:6], two[:6], three[:6]} == {bytes.fromhex("018c34b31200")}
    assert len({one[6:], two[6:], three[6:]}) == 3
    await alice.close()


async def test_an_entry_stays_until_its_sent_and_is_retired_after_it() -> None:
    relay = Relay()
    alice = await relay.alice()
    relay.on_send = held
    sending = asyncio.create_task(alice.send("bob", "hello"))
    (send,) = await relay.ends[0].wait_for(frames.Send)
    assert [e.msg_id for e in relay.store.outbox()] == [send.msg_id]
    assert [e.msg_id for e in alice.outbox.entries()] == [send.msg_id]
    answer_sent(relay.ends[0], send)
    assert await within(sending) == send.msg_id
    await asyncio.sleep(0)  # answered entries are deleted together at the end of the turn
    assert relay.store.outbox() == [] and len(alice.outbox) == 0 and alice.outbox.awaited == 0
    await alice.close()


async def test_unanswered_sends_go_again_in_order_with_their_msg_ids_after_a_reconnect() -> None:
    relay = Relay()
    alice = await relay.alice()
    relay.on_send = held
    sending = [asyncio.create_task(alice.send("bob", text)) for text in ("one", "two")]
    first = await relay.ends[0].wait_for(frames.Send, 2)
    relay.on_send = answer_sent
    relay.ends[0].drop()
    again = await (await relay.connection(1)).wait_for(frames.Send, 2)
    assert [s.msg_id for s in again] == [s.msg_id for s in first]
    assert [s.body for s in again] == [s.body for s in first]  # the same envelopes
    assert [await within(task) for task in sending] == [s.msg_id for s in first]
    await alice.close()


async def test_after_a_relay_fault_the_envelope_waits_for_the_next_connection() -> None:
    relay = Relay()
    alice = await relay.alice()
    relay.on_send = refusing(InternalError())
    sending = asyncio.create_task(alice.send("bob", "hello"))
    (send,) = await relay.ends[0].wait_for(frames.Send)
    await within(alice.send("bob", "answered after the fault"))  # so the fault was read
    assert not sending.done() and [e.msg_id for e in relay.store.outbox()] == [send.msg_id]
    relay.ends[0].drop()
    (again,) = await (await relay.connection(1)).wait_for(frames.Send)
    assert again.msg_id == send.msg_id
    assert await within(sending) == send.msg_id
    await alice.close()


async def test_a_send_after_a_closing_error_waits_for_the_next_connection() -> None:
    """Between a closing ERROR (901 on every shutdown or deploy) and the socket's end,
    a send raised RuntimeError though its envelope was kept and went out on the next
    connection: an application that retried made a second message, under a new msg_id
    (found in review). Now it waits for its SENT like any send while offline. Since T55
    the client also leaves that connection itself at the ERROR (a relay may leave it
    open): the send goes once, on the next connection."""
    relay = Relay()
    alice = await relay.alice()
    relay.ends[0].refuse(ShuttingDown(), re=None)  # and the relay leaves the socket open
    await asyncio.sleep(0.05)  # the client has read the ERROR
    sending = asyncio.create_task(alice.send("bob", "during the shutdown"))
    end = await relay.connection(1)
    (again,) = await end.wait_for(frames.Send)
    assert await within(sending) == again.msg_id
    assert relay.ends[0].received(frames.Send) == []
    assert relay.store.outbox() == []
    await alice.close()


async def test_rate_limited_goes_again_after_retry_after_while_retries_last() -> None:
    relay = Relay()
    alice = await relay.alice()
    relay.on_send = refusing(RateLimited(retry_after_ms=1))
    msg_id = await within(alice.send("bob", "one", rate_limit_retries=1))
    assert [s.msg_id for s in relay.ends[0].received(frames.Send)] == [msg_id, msg_id]

    relay.on_send = refusing(RateLimited(retry_after_ms=1), RateLimited(retry_after_ms=1))
    with pytest.raises(RateLimited):
        await within(alice.send("bob", "two", rate_limit_retries=1))
    assert len(relay.ends[0].received(frames.Send)) == 4
    await asyncio.sleep(0)
    assert relay.store.outbox() == []  # the refusal is the outcome: retired
    await alice.close()


async def test_a_store_outage_sends_the_same_msg_id_again_after_retry_after() -> None:
    relay = Relay()
    alice = await relay.alice()
    relay.on_send = refusing(StoreUnavailable(retry_after_ms=1), StoreUnavailable(retry_after_ms=1))
    msg_id = await within(alice.send("bob", "hello"))
    assert [s.msg_id for s in relay.ends[0].received(frames.Send)] == [msg_id] * 3
    await alice.close()


async def test_any_other_refusal_is_the_outcome_and_retires_the_entry() -> None:
    relay = Relay()
    alice = await relay.alice()
    relay.on_send = refusing(RecipientUnavailable())
    with pytest.raises(RecipientUnavailable):
        await within(alice.send("bob", "hello"))
    await asyncio.sleep(0)
    assert relay.store.outbox() == [] and len(alice.outbox) == 0
    assert len(relay.ends[0].received(frames.Send)) == 1
    await alice.close()


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
    stores = store_outage(monkeypatch, outages=3)

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


# --- A relay that never answers a SEND (T55) ---------------------------------------------

QUICK = 0.2
"""The answer timeout these tests give the client (``ANSWER_TIMEOUT_S`` is 60 s)."""


async def test_a_send_never_answered_goes_again_on_a_new_connection_once() -> None:
    """T55: a relay that answers pings but never a SEND kept the send waiting for ever on
    that connection. The connection is dropped once the SENT is overdue and the envelope
    goes again on the next one with its msg_id (SPEC §6.3: answered once), so a relay
    that was stuck stores one message, not two."""
    relay = Relay()
    relay.on_send = lambda end, send: None if relay.ends.index(end) == 0 else answer_sent(end, send)
    alice = await relay.alice(answer_timeout_s=QUICK)
    msg_id = await within(alice.send("bob", "are you there?"), 5)
    sends = [send for end in relay.ends for send in end.received(frames.Send)]
    assert [send.msg_id for send in sends] == [msg_id, msg_id] and len(relay.ends) == 2
    assert relay.store.outbox() == []
    await alice.close()


async def test_a_slow_relay_answering_a_long_queue_in_turn_is_not_cut_off() -> None:
    """An honest relay working through a long queue (the outbox resent after a
    reconnect) answers the last SEND long after it was sent: a request's clock starts
    only once those before it are answered, so nothing is dropped or sent twice while
    answers keep coming — here 8 SENTs, one every half timeout."""
    relay = Relay()
    waiting: list[tuple[RelayEnd, frames.Send]] = []
    relay.on_send = lambda end, send: waiting.append((end, send))
    alice = await relay.alice(answer_timeout_s=QUICK)
    sending = [asyncio.create_task(alice.send("bob", f"message {n}")) for n in range(8)]
    while len(waiting) < 8:
        await asyncio.sleep(0.01)
    for end, send in waiting:
        await asyncio.sleep(QUICK / 2)
        answer_sent(end, send)
    assert len(await within(asyncio.gather(*sending))) == 8
    assert len(relay.ends) == 1 and len(relay.ends[0].received(frames.Send)) == 8
    await alice.close()
