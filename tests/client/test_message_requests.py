"""Message requests, the SDK side (client/message_requests.py; issue 13 item 10; SPEC §7.3).

A user has accepted another user once it has sent them any chat (messages and
receipts alike). Until then the other is a stranger and its messages are
*requests*: the SDK marks them (``Message.is_request``) and never answers one with
an automatic delivered receipt — a receipt is a chat and would accept the request
silently. ``Client.accept_request`` accepts explicitly. These tests run against the
relay as it is, without depending on its message-request limit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.message_requests import MessageRequests
from blindrelay.client.sdk import Client
from blindrelay.client.transport import tapped
from blindrelay.protocol import codec, frames
from blindrelay.protocol.content import MAX_RECEIPT_REFS, ReceiptType

from ..relays import relay_at
from .harness import FAST, LOW_COST, Inbox, online, run, within
from .keystore.samples import our_identity


async def online_tapped(url: str, handle: str, written: list[frames.Frame]) -> Client:
    """A client whose every written frame is decoded into ``written``."""

    def tap(way: str, data: bytes) -> None:
        if way == "out":
            written.append(codec.decode(data))

    return await online(url, handle, open_transport=tapped(tap))


def account(kind: str = "user") -> tuple[MessageRequests, MemoryKeyStore]:
    store = MemoryKeyStore()
    store.set_identity(dataclasses.replace(our_identity(), account_kind=kind))
    return MessageRequests(store), store


def test_a_user_s_message_is_a_request_until_we_wrote_to_its_sender() -> None:
    requests, store = account()
    assert requests.is_request("bob", "user")
    assert not requests.is_request("airline", "business")  # businesses: consent instead
    assert requests.note_chat("bob")
    requests.noted(["bob"])
    assert not requests.is_request("bob", "user") and store.wrote_to() == {"bob"}
    assert not requests.note_chat("bob")  # known already: nothing more to write
    assert not MessageRequests(store).is_request("bob", "user")  # kept in the profile


def test_a_chat_noted_in_a_transaction_that_failed_changes_nothing() -> None:
    requests, store = account()
    with pytest.raises(RuntimeError), store.atomic():
        assert requests.note_chat("bob")
        raise RuntimeError("the send failed")
    assert store.wrote_to() == set() and requests.is_request("bob", "user")


def test_a_business_has_no_message_requests() -> None:
    requests, store = account("business")
    assert not requests.is_request("bob", "user")
    assert not requests.note_chat("bob") and store.wrote_to() == set()
    requests.accept("bob")
    assert store.wrote_to() == set()


def test_receipts_owed_to_a_requester_are_kept_once_each_up_to_one_receipt_s_worth() -> None:
    requests, store = account()
    ids = [n.to_bytes(16, "big") for n in range(MAX_RECEIPT_REFS + 2)]
    for msg_id in [ids[0], ids[0], *ids[1:]]:
        requests.owe_receipt("bob", msg_id)
    assert requests.owed_receipts("bob") == ids[:MAX_RECEIPT_REFS]
    assert MessageRequests(store).owed_receipts("bob") == ids[:MAX_RECEIPT_REFS]
    requests.forget_owed("bob")
    assert requests.owed_receipts("bob") == [] and store.all_owed_receipts() == {}


def test_accepting_without_writing_makes_the_sender_a_contact() -> None:
    requests, store = account()
    requests.accept("bob")
    assert not requests.is_request("bob", "user") and store.wrote_to() == {"bob"}


def test_the_account_kind_is_read_again_after_the_identity_changes() -> None:
    requests, store = account("business")
    assert not requests.is_request("bob", "user")
    store.set_identity(our_identity())  # the profile now holds a user account
    assert not requests.is_request("bob", "user")  # the kind read before still holds
    requests.account_changed()
    assert requests.is_request("bob", "user")


def test_a_stranger_s_message_is_a_request_and_gets_no_automatic_receipt(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            written: list[frames.Frame] = []
            bob = await online_tapped(relay.url, "bob", written)
            bob_inbox, alice_inbox = Inbox(bob), Inbox(alice)
            first = await within(alice.send("bob", "hello, we met at the conference"))
            second = await within(alice.send("bob", "it's alice"))

            got = await bob_inbox.next()
            assert (got.sender, got.msg_id, got.is_request) == ("alice", first, True)
            assert (await bob_inbox.next()).is_request
            await within(bob.statements())  # a round trip: anything queued before is written
            assert not [f for f in written if isinstance(f, frames.Send)]  # no receipt: no chat

            receipt_id = await within(bob.accept_request("alice"))
            assert receipt_id is not None
            receipt = await alice_inbox.next_receipt()
            assert (receipt.type, receipt.msg_ids) == (ReceiptType.DELIVERED, (first, second))

            third = await within(alice.send("bob", "thanks!"))
            got = await bob_inbox.next()
            assert (got.body, got.is_request) == ("thanks!", False)
            later = await alice_inbox.next_receipt()  # accepted: automatic receipts again
            assert (later.type, later.msg_ids) == (ReceiptType.DELIVERED, (third,))
            assert await within(bob.accept_request("alice")) is None  # nothing owed any more
            for closing in (bob_inbox, alice_inbox, alice, bob):
                await closing.close()

    run(scenario())


def test_writing_first_makes_a_contact_and_it_is_kept_in_the_profile(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "bob.keys"
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            bob = Client.open(path, "pw", backoff=FAST, **LOW_COST)
            await within(bob.connect(relay.url))
            await within(bob.register("bob"))
            await within(bob.send("alice", "hi alice, bob here"))
            await bob.close()
            await within(alice.send("bob", "hi bob"))

            bob = Client.open(path, "pw", backoff=FAST)
            await within(bob.connect(relay.url))
            await within(bob.login())
            inbox = Inbox(bob)
            got = await inbox.next()
            assert (got.body, got.is_request) == ("hi bob", False)
            for closing in (inbox, alice, bob):
                await closing.close()

    run(scenario())


def test_businesses_neither_send_nor_receive_requests(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            shop = await online(relay.url, "shop", "business")
            alice = await online(relay.url, "alice")
            shop_inbox, alice_inbox = Inbox(shop), Inbox(alice)
            await within(alice.send("shop", "is my order ready?"))
            assert not (await shop_inbox.next()).is_request
            await within(shop.send("alice", "yes"))
            assert not (await alice_inbox.next()).is_request
            for closing in (shop_inbox, alice_inbox, shop, alice):
                await closing.close()

    run(scenario())


def test_blocking_a_requester_forgets_the_receipts_owed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            mallory = await online(relay.url, "mallory")
            bob = await online(relay.url, "bob", store=MemoryKeyStore())
            inbox = Inbox(bob)
            await within(mallory.send("bob", "buy cheap watches"))
            assert (await inbox.next()).is_request
            await within(bob.block("mallory"))
            assert await within(bob.accept_request("mallory")) is None  # nothing owed
            for closing in (inbox, mallory, bob):
                await closing.close()

    run(scenario())
