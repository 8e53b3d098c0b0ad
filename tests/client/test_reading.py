"""Reading the inbox (client/reading.py): messages and receipts apart, each item yielded
once and acknowledged at the application's next step (SPEC §6.5).

The stream's contract on a key store alone (the end of this module); through the
SDK against real relays on 127.0.0.1 port 0, no sleeps. A crash is a real one: the profile's
owner runs in a child process that kills itself with SIGKILL while it holds an
item, and the test then opens the same SQLite profile.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from blindrelay.client.incoming import Incoming
from blindrelay.client.keystore import IncomingMessage, MemoryKeyStore
from blindrelay.client.reading import InboxStream
from blindrelay.client.sdk import Client, IdentityState
from blindrelay.protocol.content import Content, Receipt, ReceiptType
from blindrelay.protocol.errors import BlindrelayError

from ..relays import relay_at
from .harness import FAST, LOW_COST, TIMEOUT, Inbox, online, within

PASSPHRASE = "pw"

CRASHING_OWNER = """
import asyncio, os, signal, sys
from blindrelay.client.sdk import Client

async def main(url, profile, kind, how):
    client = Client.open(profile, "pw")
    await client.connect(url)
    await client.login()
    read = client.messages if kind == "messages" else client.receipts
    def show(item):
        print(item.body if kind == "messages" else item.msg_ids[0].hex(), flush=True)
    if how == "break":  # leave the loop, then die
        async for item in read():
            show(item)
            break
    else:  # die with the second item in hand
        items = read()
        for _ in range(2):
            show(await anext(items))
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(*sys.argv[1:]))
"""
"""The profile's owner in a process of its own: reads, then dies without closing. It
prints each item it was given: a message's body, a receipt's first msg_id in hex."""


async def crash_while_reading(url: str, profile: Path, kind: str, how: str) -> list[str]:
    """Run :data:`CRASHING_OWNER`; the lines it printed before SIGKILL ended it."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_OWNER, url, str(profile), kind, how,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(child.communicate(), 3 * TIMEOUT)
    assert child.returncode == -signal.SIGKILL, err.decode()
    return out.decode().splitlines()


async def on_disk(url: str, profile: Path, handle: str, **options: object) -> Client:
    """A new account whose profile is a SQLite file, online."""
    client = Client.open(profile, PASSPHRASE, backoff=FAST, **LOW_COST, **options)
    await within(client.connect(url))
    await within(client.register(handle))
    return client


async def reopened(url: str, profile: Path) -> Client:
    client = Client.open(profile, PASSPHRASE, backoff=FAST)
    await within(client.connect(url))
    await within(client.login())
    return client


# --- messages and receipts apart -------------------------------------------------------


async def test_receipts_never_come_out_of_messages_and_come_out_of_receipts_in_order(
    tmp_path: Path,
) -> None:
    async with relay_at(tmp_path) as relay:
        alice = await online(relay.url, "alice")
        bob = await online(relay.url, "bob")
        alice_inbox, bob_inbox = Inbox(alice), Inbox(bob)
        await within(alice.send("bob", "hi bob"))  # alice is bob's contact: receipts
        assert (await bob_inbox.next()).body == "hi bob"
        await within(bob.send("alice", "hi alice"))
        assert (await alice_inbox.next()).body == "hi alice"

        sent = [await within(alice.send("bob", f"m{i}")) for i in range(3)]
        assert [(await bob_inbox.next()).body for _ in sent] == ["m0", "m1", "m2"]
        await within(bob.send_read_receipt("alice", sent[:2]))
        await within(bob.send("alice", "read two of them"))

        # The message after the receipts is the next message: none of them came first.
        assert (await alice_inbox.next()).body == "read two of them"
        receipts = [await alice_inbox.next_receipt() for _ in range(4)]
        assert [(r.sender, r.type, r.msg_ids) for r in receipts] == [
            ("bob", ReceiptType.DELIVERED, (sent[0],)),
            ("bob", ReceiptType.DELIVERED, (sent[1],)),
            ("bob", ReceiptType.DELIVERED, (sent[2],)),
            ("bob", ReceiptType.READ, (sent[0], sent[1])),
        ]
        assert all(r.at > 0 for r in receipts)
        assert [r.at for r in receipts] == sorted(r.at for r in receipts)
        for closing in (alice_inbox, bob_inbox, alice, bob):
            await closing.close()


async def test_receipts_kept_in_the_profile_come_out_after_a_restart_in_order(
    tmp_path: Path,
) -> None:
    profile = tmp_path / "alice.keys"
    async with relay_at(tmp_path) as relay:
        alice = await on_disk(relay.url, profile, "alice")
        bob = await online(relay.url, "bob", auto_delivered_receipts=False)
        sent = [await within(alice.send("bob", f"m{i}")) for i in range(2)]
        bob_inbox = Inbox(bob)
        assert [(await bob_inbox.next()).msg_id for _ in sent] == sent
        await within(bob.send_read_receipt("alice", [sent[0]]))
        await within(bob.send_read_receipt("alice", [sent[1]]))
        await within(bob.send("alice", "both read"))
        # Delivered in order: once the message is read, the receipts are in her profile.
        assert (await within(anext(alice.messages()))).body == "both read"
        await alice.close()

        alice = await reopened(relay.url, profile)
        assert alice.welcome is not None and alice.welcome.queued == 0  # all from the profile
        alice_inbox = Inbox(alice)
        assert [(await alice_inbox.next_receipt()).msg_ids for _ in sent] == [
            (sent[0],),
            (sent[1],),
        ]
        for closing in (alice_inbox, bob_inbox, alice, bob):
            await closing.close()


# --- when an item is acknowledged ------------------------------------------------------


async def test_after_break_a_new_iterator_yields_the_next_message(tmp_path: Path) -> None:
    async with relay_at(tmp_path) as relay:
        alice = await online(relay.url, "alice")
        bob_store = MemoryKeyStore()
        bob = await online(relay.url, "bob", store=bob_store)
        sent = [await within(alice.send("bob", f"m{i}")) for i in range(3)]

        async def first() -> str | bytes:
            async for message in bob.messages():
                return message.body
            raise AssertionError("no message")

        assert await within(first()) == "m0"
        async for message in bob.messages():
            assert message.body == "m1"
            break
        # Leaving the loop acknowledged m1 there and then, before any other step.
        assert sent[1] not in {m.msg_id for m in bob_store.pending_messages()}
        assert (await within(anext(bob.messages()))).body == "m2"
        await alice.close()
        await bob.close()


async def test_an_exception_in_the_loop_acknowledges_the_message(tmp_path: Path) -> None:
    async with relay_at(tmp_path) as relay:
        alice = await online(relay.url, "alice")
        bob = await online(relay.url, "bob")
        await within(alice.send("bob", "boom"))
        await within(alice.send("bob", "after"))

        async def fail_on_first() -> None:
            async for message in bob.messages():
                raise ValueError(message.body)

        with pytest.raises(ValueError, match="boom"):
            await within(fail_on_first())
        assert (await within(anext(bob.messages()))).body == "after"
        await alice.close()
        await bob.close()


async def test_a_new_iterator_takes_over_and_the_old_one_s_message_is_acknowledged(
    tmp_path: Path,
) -> None:
    async with relay_at(tmp_path) as relay:
        alice = await online(relay.url, "alice")
        bob_store = MemoryKeyStore()
        bob = await online(relay.url, "bob", store=bob_store)
        sent = [await within(alice.send("bob", f"m{i}")) for i in range(3)]
        old = bob.messages()
        assert (await within(anext(old))).body == "m0"
        new = bob.messages()  # m0 is done with: acknowledged now
        assert sent[0] not in {m.msg_id for m in bob_store.pending_messages()}
        assert (await within(anext(new))).body == "m1"
        assert (await within(anext(old))).body == "m2"  # one queue: each message once
        await old.aclose()
        await new.aclose()
        assert bob_store.pending_messages() == []
        await alice.close()
        await bob.close()


async def test_closing_the_client_acknowledges_the_message_in_hand(tmp_path: Path) -> None:
    profile = tmp_path / "bob.keys"
    async with relay_at(tmp_path) as relay:
        alice = await online(relay.url, "alice")
        bob = await on_disk(relay.url, profile, "bob")
        await within(alice.send("bob", "m0"))
        await within(alice.send("bob", "m1"))
        messages = bob.messages()
        assert (await within(anext(messages))).body == "m0"
        await bob.close()  # with m0 still in hand

        bob = await reopened(relay.url, profile)
        assert (await within(anext(bob.messages()))).body == "m1"
        await alice.close()
        await bob.close()


async def test_a_released_message_comes_first_again_and_survives_close(tmp_path: Path) -> None:
    profile = tmp_path / "bob.keys"
    async with relay_at(tmp_path) as relay:
        alice = await online(relay.url, "alice")
        bob = await on_disk(relay.url, profile, "bob")
        await within(alice.send("bob", "m0"))
        await within(alice.send("bob", "m1"))
        messages = bob.messages()
        assert (await within(anext(messages))).body == "m0"
        messages.release()  # not handled after all
        again = bob.messages()
        assert (await within(anext(again))).body == "m0"  # first, to the next iterator
        again.release()
        await bob.close()  # nothing in hand: m0 stays in the profile

        bob = await reopened(relay.url, profile)
        assert (await within(anext(bob.messages()))).body == "m0"
        await alice.close()
        await bob.close()


# --- crashes (SIGKILL) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "given"),
    [("hold", ["m0", "m1"]), ("break", ["m0"])],
    ids=["died-holding-the-second", "died-after-leaving-the-loop"],
)
async def test_after_a_crash_only_the_message_in_hand_comes_back(
    tmp_path: Path, how: str, given: list[str]
) -> None:
    profile = tmp_path / "bob.keys"
    async with relay_at(tmp_path) as relay:
        alice = await online(relay.url, "alice")
        bob = await on_disk(relay.url, profile, "bob")
        await bob.close()
        for i in range(3):
            await within(alice.send("bob", f"m{i}"))

        assert await crash_while_reading(relay.url, profile, "messages", how) == given

        bob = await reopened(relay.url, profile)
        inbox = Inbox(bob)
        # Held: m1 was in hand and comes back. Left the loop: m0 was acknowledged.
        assert [(await inbox.next()).body for _ in range(2)] == ["m1", "m2"]
        for closing in (inbox, alice, bob):
            await closing.close()


async def test_a_crash_brings_back_the_receipt_in_hand(tmp_path: Path) -> None:
    profile = tmp_path / "alice.keys"
    async with relay_at(tmp_path) as relay:
        alice = await on_disk(relay.url, profile, "alice")
        bob = await online(relay.url, "bob", auto_delivered_receipts=False)
        sent = [await within(alice.send("bob", f"m{i}")) for i in range(3)]
        await alice.close()
        bob_inbox = Inbox(bob)
        assert [(await bob_inbox.next()).msg_id for _ in sent] == sent
        for msg_id in sent:
            await within(bob.send_read_receipt("alice", [msg_id]))

        given = await crash_while_reading(relay.url, profile, "receipts", "hold")
        assert given == [sent[0].hex(), sent[1].hex()]

        alice = await reopened(relay.url, profile)
        alice_inbox = Inbox(alice)
        assert [(await alice_inbox.next_receipt()).msg_ids for _ in range(2)] == [
            (sent[1],),
            (sent[2],),
        ]
        for closing in (alice_inbox, bob_inbox, alice, bob):
            await closing.close()


# --- the stream itself ------------------------------------------------------------------


def incoming(store: MemoryKeyStore, number: int) -> Incoming:
    """A receipt kept in ``store`` as the inbox keeps one, and as it is read back."""
    msg_id = number.to_bytes(16, "big")
    store.commit_incoming(IncomingMessage(msg_id, "bob", number, b"row"), b"session")
    receipt = Receipt(ReceiptType.READ, ((number + 100).to_bytes(16, "big"),))
    return Incoming(
        msg_id, "bob", "user", "chat", number, IdentityState.TRUSTED, Content(msg_id, receipt)
    )


async def test_unread_items_beyond_the_limit_are_dropped_oldest_first() -> None:
    store = MemoryKeyStore()
    stream = InboxStream(
        store, lambda item: item.sent_at, raise_if_stopped=lambda: None, unread_limit=2
    )
    for number in range(1, 5):
        stream.put(incoming(store, number))
    assert [m.received_at_ms for m in store.pending_messages()] == [3, 4]
    reader = stream.reader()
    assert [await anext(reader), await anext(reader)] == [3, 4]
    await reader.aclose()
    assert store.pending_messages() == []


async def test_a_stopped_client_raises_instead_of_yielding() -> None:
    store = MemoryKeyStore()
    stopped = False

    def raise_if_stopped() -> None:
        if stopped:
            raise BlindrelayError("stopped")

    stream = InboxStream(store, lambda item: item.sent_at, raise_if_stopped=raise_if_stopped)
    reader = stream.reader()
    waiting = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)  # one turn: the reader waits for an item
    assert not waiting.done()
    stopped = True
    stream.wake()
    with pytest.raises(BlindrelayError, match="stopped"):
        await within(waiting)
    stream.put(incoming(store, 1))
    with pytest.raises(BlindrelayError, match="stopped"):  # even with an item queued
        await anext(reader)


def pending(store: MemoryKeyStore) -> list[int]:
    """The items still in the profile, by number (unacknowledged)."""
    return [message.received_at_ms for message in store.pending_messages()]


def numbered(store: MemoryKeyStore) -> InboxStream[int]:
    stream = InboxStream(store, lambda item: item.sent_at, raise_if_stopped=lambda: None)
    for number in (1, 2, 3):
        stream.put(incoming(store, number))
    return stream


async def test_an_item_is_acknowledged_when_the_next_is_asked_for_not_when_yielded() -> None:
    store = MemoryKeyStore()
    reader = numbered(store).reader()
    assert await anext(reader) == 1
    assert pending(store) == [1, 2, 3]  # in hand: a crash now brings it back
    assert await anext(reader) == 2
    assert pending(store) == [2, 3]
    await reader.aclose()
    assert pending(store) == [3]


async def test_after_break_a_new_loop_yields_the_next_item_not_the_same_one() -> None:
    store = MemoryKeyStore()
    stream = numbered(store)
    async for item in stream.reader():
        assert item == 1
        break
    assert pending(store) == [2, 3]  # leaving the loop acknowledged it
    async for item in stream.reader():
        assert item == 2
        break
    assert pending(store) == [3]


async def test_a_new_reader_takes_over_and_the_old_one_cannot_acknowledge_its_item() -> None:
    store = MemoryKeyStore()
    stream = numbered(store)
    old = stream.reader()
    assert await anext(old) == 1
    new = stream.reader()  # the old one's item in hand is done with
    assert pending(store) == [2, 3]
    assert await anext(new) == 2
    await old.aclose()  # not the holder of 2: changes nothing
    assert pending(store) == [2, 3]
    assert await anext(old) == 3  # one queue for the kind: the old one reads on
    assert pending(store) == [3]


async def test_closing_acknowledges_the_item_in_hand_and_leaves_the_rest() -> None:
    store = MemoryKeyStore()
    stream = numbered(store)
    reader = stream.reader()
    assert await anext(reader) == 1
    stream.close()
    assert pending(store) == [2, 3]
    await reader.aclose()
    assert pending(store) == [2, 3]
