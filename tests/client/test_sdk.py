"""The SDK end to end: real relays on 127.0.0.1 port 0, real sockets, no sleeps.

Every wait is on a future or an event with a timeout (``within``). Each test
runs its own event loop through ``run`` (the project has no asyncio pytest
plugin), starts its own relay in ``tmp_path`` and closes everything it opened.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from blindrelay.client.keystore import (
    MemoryKeyStore,
)
from blindrelay.client.sdk import Client
from blindrelay.client.trust import IdentityState
from blindrelay.protocol import frames
from blindrelay.protocol.content import ReceiptType

from ..relays import relay_at
from .harness import (
    FAST,
    LOW_COST,
    Inbox,
    back_online,
    make_client,
    online,
    run,
    within,
)


def test_two_clients_exchange_messages_through_a_relay(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            alice_inbox, bob_inbox = Inbox(alice), Inbox(bob)

            msg_id = await within(alice.send("bob", "hello bob"))
            got = await bob_inbox.next()
            assert (got.sender, got.body, got.msg_id) == ("alice", "hello bob", msg_id)
            assert got.identity is IdentityState.NEW and got.sent_at > 0
            assert got.is_request  # bob never wrote to alice: no automatic receipt

            await within(bob.send("alice", b"\x00binary reply"))
            reply = await alice_inbox.next()
            # Alice pinned bob's key when she fetched his bundle: trusted, not new.
            assert (reply.sender, reply.body, reply.identity) == (
                "bob",
                b"\x00binary reply",
                IdentityState.TRUSTED,
            )
            for i in range(5):
                await within(alice.send("bob", f"more {i}"))
            assert [(await bob_inbox.next()).body for _ in range(5)] == [
                f"more {i}" for i in range(5)
            ]
            receipt = await alice_inbox.next_receipt()  # bob wrote back: automatic receipts now
            assert (receipt.sender, receipt.type) == ("bob", ReceiptType.DELIVERED)
            assert alice.safety_number("bob") == bob.safety_number("alice")
            await alice_inbox.close()
            await bob_inbox.close()
            await alice.close()
            await bob.close()

    run(scenario())


def test_a_message_to_an_offline_recipient_arrives_at_its_next_login(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            bob_store = MemoryKeyStore()
            bob = await online(relay.url, "bob", store=bob_store)
            await bob.close()
            alice = await online(relay.url, "alice")

            await within(alice.send("bob", "while you were away"))

            bob = await back_online(relay.url, bob_store)
            assert bob.welcome is not None and bob.welcome.queued == 1
            inbox = Inbox(bob)
            assert (await inbox.next()).body == "while you were away"
            await inbox.close()
            await alice.close()
            await bob.close()

    run(scenario())


def test_a_client_restarts_mid_conversation_from_its_keystore_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "bob.keys"
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            bob = Client.open(path, "correct horse", backoff=FAST, **LOW_COST)
            await within(bob.connect(relay.url))
            await within(bob.register("bob"))
            inbox = Inbox(bob)
            await within(alice.send("bob", "one"))
            assert (await inbox.next()).body == "one"
            await within(bob.send("alice", "two"))
            await inbox.close()
            await bob.close()

            await within(alice.send("bob", "three"))
            await within(alice.send("bob", "four"))

            bob = Client.open(path, "correct horse", backoff=FAST)
            await within(bob.connect(relay.url))
            await within(bob.login())
            inbox = Inbox(bob)
            assert [(await inbox.next()).body for _ in range(2)] == ["three", "four"]
            await within(bob.send("alice", "five"))
            alice_inbox = Inbox(alice)
            assert [(await alice_inbox.next()).body for _ in range(2)] == ["two", "five"]
            for closing in (inbox, alice_inbox, bob, alice):
                await closing.close()

    run(scenario())


def test_receipts_round_trip_as_chat_envelopes_the_relay_cannot_tell_apart(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice_store = MemoryKeyStore()
            alice = await online(relay.url, "alice", store=alice_store)
            bob = await online(relay.url, "bob")
            msg_id = await within(alice.send("bob", "read me"))
            inbox = Inbox(bob)
            assert (await inbox.next()).msg_id == msg_id
            await within(bob.accept_request("alice"))  # the delivered receipt it was owed
            alice_inbox = Inbox(alice)
            delivered = await alice_inbox.next_receipt()
            assert (delivered.type, delivered.msg_ids) == (ReceiptType.DELIVERED, (msg_id,))
            await alice_inbox.close()
            await alice.close()

            read_id = await within(bob.send_read_receipt("alice", [msg_id]))
            text_id = await within(bob.send("alice", "hi"))
            with sqlite3.connect(tmp_path / "relay.db") as db:
                rows = {
                    bytes(row[0]): (row[1], len(row[2]))
                    for row in db.execute(
                        "SELECT msg_id, intent, body FROM queue WHERE recipient = 'alice'"
                    )
                }
            assert rows[read_id][0] == rows[text_id][0] == "chat"
            assert rows[read_id][1] == rows[text_id][1]  # same padding bucket, same size

            alice = await back_online(relay.url, alice_store)
            alice_inbox = Inbox(alice)
            read = await alice_inbox.next_receipt()
            assert (read.sender, read.type, read.msg_ids) == ("bob", ReceiptType.READ, (msg_id,))
            assert (await alice_inbox.next()).body == "hi"  # the message after it, apart
            for closing in (inbox, alice_inbox, alice, bob):
                await closing.close()

    run(scenario())


def test_an_on_disk_profile_without_a_passphrase_is_refused_before_a_file_is_made(
    tmp_path: Path,
) -> None:
    path = tmp_path / "alice.profile"
    with pytest.raises(ValueError, match="passphrase"):
        Client.open(path)
    assert not path.exists()


def test_callbacks_set_after_construction_are_the_ones_called(tmp_path: Path) -> None:
    """The application's hooks are read at each call, not captured when the parts are made."""

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = make_client()
            welcomes: list[frames.Welcome] = []
            changed: asyncio.Queue[str] = asyncio.Queue()
            alice.on_connected = welcomes.append
            alice.on_identity_change = changed.put_nowait
            await within(alice.connect(relay.url))
            await within(alice.register("alice"))
            assert welcomes == [alice.welcome] and alice.connection_count == 1

            bob = await online(relay.url, "bob")
            await within(bob.send("alice", "hi"))
            inbox = Inbox(alice)
            assert (await inbox.next()).body == "hi"  # alice pinned bob's key
            await within(bob.rotate_identity())
            await within(bob.send("alice", "new key"))
            assert await within(changed.get()) == "bob"
            await inbox.close()
            await bob.close()
            await alice.close()

    run(scenario())
