"""Message requests, the SDK side (issue 13 item 10; SPEC §7.3).

A user has accepted another user once it has sent them any chat (messages and
receipts alike). Until then the other is a stranger and its messages are
*requests*: the SDK marks them (``Message.is_request``) and never answers one with
an automatic delivered receipt — a receipt is a chat and would accept the request
silently. ``Client.accept_request`` accepts explicitly. These tests run against the
relay as it is, without depending on its message-request limit.
"""

from __future__ import annotations

from pathlib import Path

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client
from blindrelay.client.transport import tapped
from blindrelay.protocol import codec, frames
from blindrelay.protocol.content import ReceiptType

from ..relays import relay_at
from .harness import FAST, LOW_COST, Inbox, online, run, within


async def online_tapped(url: str, handle: str, written: list[frames.Frame]) -> Client:
    """A client whose every written frame is decoded into ``written``."""

    def tap(way: str, data: bytes) -> None:
        if way == "out":
            written.append(codec.decode(data))

    return await online(url, handle, open_transport=tapped(tap))


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
