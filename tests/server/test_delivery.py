"""Store-and-forward over real sockets (SPEC §6): durable SENT, delivery, ACK, order."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings

from blindrelay.protocol.codec import encode
from blindrelay.protocol.errors import ErrorCode, StoreUnavailable
from blindrelay.protocol.frames import Ack, Deliver, Error, Send, Sent
from blindrelay.server import relay as relay_module
from blindrelay.server.config import RelayConfig
from blindrelay.server.outbox import deliver_row
from blindrelay.server.relay import RunningRelay
from blindrelay.server.store import QueuedEnvelope, envelope_row, open_store

from ..protocol.strategies import frame_strategy
from .conftest import ALL_BACKENDS, Clients, FakeClock, RelayFixture, db_rows, error_code

BACKENDS = ALL_BACKENDS


@settings(max_examples=100)
@given(frame_strategy(Deliver))
def test_a_queue_row_encodes_to_the_codecs_deliver(frame: Deliver) -> None:
    """The store's row form (``envelope_row``) is what pages and hints carry."""
    envelope = QueuedEnvelope(
        delivery_id=frame.delivery_id, recipient="someone", sender=frame.sender,
        sender_kind=frame.sender_kind, msg_id=frame.msg_id, intent=frame.intent,
        category=frame.category, categories=frame.categories, sent_at=frame.sent_at,
        body=frame.body,
    )  # fmt: skip
    assert deliver_row(envelope_row(envelope)) == encode(frame)


async def test_sent_arrives_only_after_the_envelope_is_committed(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    await clients.registered(relay.url, "bob")
    msg_id = os.urandom(16)
    sent = await alice.send_message("bob", b"ciphertext", msg_id=msg_id)
    assert isinstance(sent, Sent) and sent.msg_id == msg_id
    # Read from another connection the moment SENT is in hand: it must be on disk.
    assert db_rows(relay.config, "SELECT body FROM queue WHERE msg_id = ?", (msg_id,)) == [
        (b"ciphertext",)
    ]


async def test_online_recipient_gets_the_envelope_at_once(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    msg_id = os.urandom(16)
    sent = await alice.send_message("bob", b"hello bob", msg_id=msg_id)
    assert isinstance(sent, Sent) and sent.at == clock.now
    deliver = await bob.push(Deliver)
    assert (deliver.sender, deliver.sender_kind, deliver.msg_id, deliver.body) == (
        "alice", "user", msg_id, b"hello bob",
    )  # fmt: skip
    assert deliver.sent_at == clock.now and deliver.intent == "chat"


async def test_offline_recipient_gets_queued_envelopes_on_login(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    await bob.close()
    for n in range(3):
        assert isinstance(await alice.send_message("bob", b"m%d" % n), Sent)
    bob2, welcome = await clients.logged_in(relay.url, "bob", bob.key)
    assert welcome.queued == 3
    assert [d.body for d in await bob2.deliveries(3)] == [b"m0", b"m1", b"m2"]


async def test_ack_deletes_the_envelope(relay: RunningRelay, clients: Clients) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    await alice.send_message("bob", b"x")
    deliver = await bob.push(Deliver)
    await bob.send(Ack(delivery_ids=(deliver.delivery_id,)))
    # The ACK has no response; a later request on the same connection is ordered after it.
    assert isinstance(await bob.send_message("alice", b"sync"), Sent)
    await bob.close()
    _, welcome = await clients.logged_in(relay.url, "bob", bob.key)
    assert welcome.queued == 0
    assert db_rows(relay.config, "SELECT COUNT(*) FROM queue WHERE recipient = 'bob'") == [(0,)]


async def test_unacknowledged_envelopes_are_redelivered_after_reconnect(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    await alice.send_message("bob", b"one")
    await alice.send_message("bob", b"two")
    first, second = await bob.deliveries(2)
    await bob.send(Ack(delivery_ids=(first.delivery_id,)))
    # Make sure the ACK was processed, then drop the TCP connection without a close.
    assert isinstance(await bob.send_message("alice", b"sync"), Sent)
    bob.ws.transport.abort()
    bob2, welcome = await clients.logged_in(relay.url, "bob", bob.key)
    assert welcome.queued == 1
    again = await bob2.push(Deliver)
    assert (again.delivery_id, again.body) == (second.delivery_id, b"two")


async def test_ack_of_another_accounts_delivery_is_ignored(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    mallory = await clients.registered(relay.url, "mallory")
    await alice.send_message("bob", b"for bob")
    deliver = await bob.push(Deliver)
    await mallory.send(Ack(delivery_ids=(deliver.delivery_id,)))
    # Mallory's ACK is ordered before this send in the writer; bob's row survives it.
    assert isinstance(await mallory.send_message("alice", b"sync"), Sent)
    assert db_rows(relay.config, "SELECT body FROM queue WHERE recipient = 'bob'") == [
        (b"for bob",)
    ]


async def test_resend_with_same_msg_id_is_stored_once(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    alice = await clients.registered(relay.url, "alice")
    await clients.registered(relay.url, "bob")
    msg_id = os.urandom(16)
    first = await alice.send_message("bob", b"same", msg_id=msg_id)
    clock.advance(5_000)
    again = await alice.send_message("bob", b"same", msg_id=msg_id)
    assert isinstance(first, Sent) and isinstance(again, Sent)
    assert again.at == first.at
    assert db_rows(relay.config, "SELECT COUNT(*) FROM queue") == [(1,)]


async def test_resend_is_recognised_after_delivery_and_ack(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    await clients.registered(relay.url, "carol")
    msg_id = os.urandom(16)
    first = await alice.send_message("bob", b"once", msg_id=msg_id)
    deliver = await bob.push(Deliver)
    await bob.send(Ack(delivery_ids=(deliver.delivery_id,)))
    assert isinstance(await bob.send_message("carol", b"sync"), Sent)
    again = await alice.send_message("bob", b"once", msg_id=msg_id)
    assert isinstance(again, Sent) and isinstance(first, Sent) and again.at == first.at
    assert db_rows(relay.config, "SELECT COUNT(*) FROM queue WHERE recipient = 'bob'") == [(0,)]


async def test_same_msg_id_with_other_content_is_refused(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    await clients.registered(relay.url, "bob")
    await clients.registered(relay.url, "carol")
    msg_id = os.urandom(16)
    await alice.send_message("bob", b"original", msg_id=msg_id)
    changed_body = await alice.send_message("bob", b"changed", msg_id=msg_id)
    changed_to = await alice.send_message("carol", b"original", msg_id=msg_id)
    assert error_code(changed_body) == ErrorCode.MESSAGE_ID_REUSED
    assert error_code(changed_to) == ErrorCode.MESSAGE_ID_REUSED
    # The refusal does not cost the connection.
    assert isinstance(await alice.send_message("bob", b"next"), Sent)


async def test_per_pair_order_is_kept_under_pipelining(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert isinstance(await bob.send_message("alice", b"hi"), Sent)  # contacts (SPEC §7.3)
    bodies = [b"msg-%03d" % n for n in range(100)]
    ids = []
    for body in bodies:  # all in flight at once
        request_id = alice.request_id()
        ids.append(request_id)
        await alice.send(
            Send(id=request_id, to="bob", msg_id=os.urandom(16), intent="chat", body=body)
        )
    for request_id in ids:
        assert isinstance(await alice.response(request_id), Sent)
    delivered = await bob.deliveries(100)
    assert [d.body for d in delivered] == bodies
    assert [d.delivery_id for d in delivered] == sorted(d.delivery_id for d in delivered)


async def test_send_to_unknown_handle_is_recipient_unavailable(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    assert error_code(await alice.send_message("nobody", b"x")) == ErrorCode.RECIPIENT_UNAVAILABLE


class LostAnswerStore:
    """The relay's real store, but the first SEND's answer is lost after its commit, as
    when the connection to a shared store drops between COMMIT and its reply (SPEC §6.3)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.lost = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def call(self, operation: str, args: Any, done: Any, decided: Any = None) -> None:
        if operation == "send" and not self.lost:
            self.lost = True  # and its decision with it: the outbox hears nothing of it
            self.store.call(operation, args, lambda ok, value: done(False, StoreUnavailable()))
            return
        self.store.call(operation, args, done, decided)


async def test_an_envelope_committed_unbeknown_to_the_outbox_is_never_skipped(
    config: RelayConfig, clock: FakeClock, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6.4 (issue 14): the recipient's outbox pushes a new envelope at once only if
    it has seen every lower delivery id queued for it. An envelope committed without the
    outbox hearing of it (another relay process committed it, or its answer was lost in
    an outage) must still come first; pushing the next one would move the cursor past it
    and strand it until the recipient's next login."""
    monkeypatch.setattr(
        relay_module, "open_store", lambda url, cfg: LostAnswerStore(open_store(url, cfg))
    )
    async with RelayFixture(config, clock) as running:
        alice = await clients.registered(running.url, "alice")
        bob = await clients.registered(running.url, "bob")
        lost = await alice.send_message("bob", b"first")
        assert isinstance(lost, Error) and lost.code == ErrorCode.STORE_UNAVAILABLE
        assert lost.retry_after is not None
        assert isinstance(await alice.send_message("bob", b"second"), Sent)
        assert [d.body for d in await bob.deliveries(2)] == [b"first", b"second"]
