"""Sending (client/sending.py): encrypt and enqueue in one keystore transaction, one
bundle fetch per new contact, and ``send_many`` a chunk of recipients per
transaction (SPEC §6.1–6.3, §8.3).

Bulk sending against a real relay, recipient by recipient, is the scenario of
test_bulk.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindrelay.client.keystore import (
    KeyStore,
    MemoryKeyStore,
    OutboxEntry,
    SqliteKeyStore,
)
from blindrelay.client.sdk import Client
from blindrelay.client.sending import HandleLocks
from blindrelay.protocol import frames
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import (
    MalformedFrame,
    RateLimited,
    UnexpectedFrame,
    UntrustedIdentity,
)

from ..relays import relay_at
from .fake_relay import URL, FakeRelay, RelayEnd, answer_plainly, answer_sent
from .harness import (
    LOW_COST,
    Crash,
    Inbox,
    bundle,
    online,
    run,
    session_with,
    within,
)
from .log_relay import FAKE_SEED, LoggingRelay, customer


class Transactions(MemoryKeyStore):
    """Notes, for each outermost keystore transaction, how many outbox entries it wrote
    (:attr:`chunks`: those that wrote any; the others retire answered entries)."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[int] = []
        self._depth = 0

    def queue_outgoing(self, entry: OutboxEntry) -> None:
        super().queue_outgoing(entry)
        self.queued[-1] += 1

    @property
    def chunks(self) -> list[int]:
        return [count for count in self.queued if count]

    @contextlib.contextmanager
    def atomic(self) -> Iterator[object]:
        self._depth += 1
        if self._depth == 1:
            self.queued.append(0)
        try:
            with super().atomic() as block:
                yield block
        finally:
            self._depth -= 1


def holding_sends(end: RelayEnd, frame: frames.Frame) -> None:
    """Answer all but SENDs: the test answers those itself."""
    if not isinstance(frame, frames.Send):
        answer_plainly(end, frame)


CUSTOMERS = [f"user{i}" for i in range(10)]


async def shop_with_sessions(relay: FakeRelay) -> tuple[Client, Transactions]:
    store = Transactions()
    shop = await online(URL, "shop", "business", store=store, open_transport=relay.open)
    for number, handle in enumerate(CUSTOMERS):
        session_with(shop, handle, bytes([number + 1]) * 32)
    store.queued.clear()
    return shop, store


async def test_send_many_keeps_at_most_its_window_in_flight_and_refills_in_chunks() -> None:
    relay = FakeRelay()
    shop, store = await shop_with_sessions(relay)
    relay.answer = holding_sends
    sending = asyncio.create_task(shop.send_many(CUSTOMERS, "gate change", window=4))
    end = relay.ends[0]
    first = await end.wait_for(frames.Send, 4)
    assert store.chunks == [4]  # the first window: one transaction
    for send in first[:3]:  # three answered: the window refills by three, in one chunk
        answer_sent(end, send)
    await end.wait_for(frames.Send, 7)
    assert store.chunks == [4, 3]
    relay.answer = answer_plainly  # SENT at once from now on
    for send in [first[3], *end.received(frames.Send)[4:]]:  # the four still unanswered
        answer_sent(end, send)
    results = await within(sending)
    assert [handle for handle, _ in results] == CUSTOMERS
    by_recipient = {send.to: send.msg_id for send in end.received(frames.Send)}
    assert [outcome for _, outcome in results] == [by_recipient[h] for h in CUSTOMERS]
    assert sum(store.chunks) == len(CUSTOMERS) and len(store.chunks) < len(CUSTOMERS)
    await shop.close()


async def test_send_many_gives_each_recipient_its_own_outcome() -> None:
    """A recipient without a session takes the path of ``send`` (one bundle fetch); one
    whose key change awaits the user is refused alone, before anything is written."""
    relay = FakeRelay()
    shop, store = await shop_with_sessions(relay)
    shop.store.record_identity_change("user1", b"\x77" * 32)

    def bundles(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.BundleFetch):
            end.send(bundle(frame.handle, b"\x66" * 32, re=frame.id))
        else:
            answer_plainly(end, frame)

    relay.answer = bundles
    results = await within(shop.send_many(["user0", "newcomer", "user1", "user2"], "hi"))
    assert [handle for handle, _ in results] == ["user0", "newcomer", "user1", "user2"]
    outcomes = dict(results)
    assert isinstance(outcomes.pop("user1"), UntrustedIdentity)
    sends = {send.to: send.msg_id for send in relay.ends[0].received(frames.Send)}
    assert outcomes == sends  # each msg_id the one its SEND carried, committed by SENT
    assert [f.handle for f in relay.ends[0].received(frames.BundleFetch)] == ["newcomer"]
    assert store.chunks[0] == 2  # user0 and user2 together; the newcomer on its own
    with pytest.raises(ValueError, match="window"):
        await shop.send_many(["user0"], "hi", window=0)
    await shop.close()


async def test_a_contact_lock_exists_only_while_someone_holds_or_awaits_it() -> None:
    locks = HandleLocks()
    held: list[tuple[str, bool]] = []  # who held it, and whether it showed as busy
    release = asyncio.Event()

    async def holder(name: str) -> None:
        async with locks.hold("bob"):
            held.append((name, locks.busy("bob")))
            await release.wait()

    first = asyncio.create_task(holder("first"))
    second = asyncio.create_task(holder("second"))
    await asyncio.sleep(0)
    assert held == [("first", True)]  # the second waits for the first
    assert not locks.busy("carol") and len(locks) == 1
    release.set()
    await within(asyncio.gather(first, second))
    assert held == [("first", True), ("second", True)]
    assert not locks.busy("bob") and len(locks) == 0  # gone once nobody holds or awaits it


async def test_a_send_that_finds_the_contact_s_lock_held_waits_its_turn_with_a_session() -> None:
    """The lock keeps one contact's sends in order (``HandleLocks``): a send that finds it
    held queues behind its holder even when a session exists by then — here one made
    while the first message's bundle fetch was on its way, as the contact's own first
    message arriving meanwhile makes one. Taking the no-lock path because the session
    exists, the second message was sent before the first (mutation analysis of
    client/sending.py: ``locks.busy`` dropped from the test for that path)."""
    relay = FakeRelay()  # answers no BUNDLE_FETCH: the test does
    alice = await online(URL, "alice", open_transport=relay.open)
    end = relay.ends[0]
    first = asyncio.create_task(alice.send("bob", "one"))
    (fetch,) = await end.wait_for(frames.BundleFetch)  # the first holds bob's lock
    session_with(alice, "bob", BOB_SEED)
    second = asyncio.create_task(alice.send("bob", "two"))
    await asyncio.sleep(0)  # one turn: the second has queued its message or taken its place
    assert alice.sender.locks.busy("bob") and len(alice.outbox) == 0
    end.send(bundle("bob", BOB_SEED, re=fetch.id))
    await within(asyncio.gather(first, second))
    assert [send.msg_id for send in end.received(frames.Send)] == [
        first.result(),
        second.result(),
    ]
    await alice.close()


# --- What the relay serves for a first message ---------------------------------------------

BOB_SEED = b"\x42" * 32


def test_a_bundle_of_another_handle_is_refused_and_starts_nothing() -> None:
    """The relay answers the bundle fetch for bob with mallory's bundle: refused as
    UnexpectedFrame, with no session or pinned key for either, nothing encrypted or sent."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.bundles = [bundle("mallory", FAKE_SEED)]
        alice = await customer(relay)
        with pytest.raises(UnexpectedFrame):
            await within(alice.send("bob", "for bob only"))
        for handle in ("bob", "mallory"):
            assert alice.store.load_session(handle) is None
            assert alice.trust.pinned_key(handle) is None
        assert alice.store.outbox() == []
        assert relay.ends[-1].received(frames.Send) == []
        await alice.close()

    run(scenario())


def test_a_bundle_with_another_key_is_surfaced_before_the_send_fails() -> None:
    """SPEC §3.3: bob's key is pinned (as a statement or a profile pins it, without a
    session) and the relay serves a bundle of another key: the send raises
    UntrustedIdentity, ``on_identity_change`` hears of bob, and the change waits."""

    async def scenario() -> None:
        relay = LoggingRelay()
        relay.bundles = [bundle("bob", FAKE_SEED)]
        changes: list[str] = []
        alice = await customer(relay, on_identity_change=changes.append)
        alice.trust.pin("bob", IdentityKeyPair.from_seed(BOB_SEED).public)
        with pytest.raises(UntrustedIdentity):
            await within(alice.send("bob", "hi"))
        assert changes == ["bob"] and alice.identity_change_pending("bob")
        assert relay.ends[-1].received(frames.Send) == []
        await alice.close()

    run(scenario())


def test_labels_no_send_may_carry_are_refused_before_anything_is_encrypted() -> None:
    """A notification without its category is refused as MalformedFrame, by the SEND's own
    rules, before the session advances or anything is stored."""

    async def scenario() -> None:
        relay = LoggingRelay()
        alice = await customer(relay)
        session_with(alice, "bob", BOB_SEED)
        before = alice.store.load_session("bob")
        with pytest.raises(MalformedFrame):
            await within(alice.send("bob", "no category", intent=frames.Intent.NOTIFICATION))
        assert alice.store.load_session("bob") == before
        assert alice.store.outbox() == []
        await alice.close()

    run(scenario())


def test_a_bulk_send_refuses_a_malformed_handle_for_that_recipient_alone() -> None:
    """Each recipient's handle is checked as a SEND's ``to`` before its envelope is made:
    a malformed one is that recipient's MalformedFrame, and the rest of the chunk goes."""

    async def scenario() -> None:
        relay = LoggingRelay()
        alice = await customer(relay)
        session_with(alice, "bob", BOB_SEED)
        outcomes = await within(alice.send_many(["", "Bob!", "bob"], "hello"))
        assert [handle for handle, _ in outcomes] == ["", "Bob!", "bob"]
        assert [type(outcome) for _, outcome in outcomes[:2]] == [MalformedFrame] * 2
        assert isinstance(outcomes[2][1], bytes)
        assert [send.to for send in relay.ends[-1].received(frames.Send)] == ["bob"]
        await alice.close()

    run(scenario())


def test_only_a_chat_makes_its_recipients_people_we_wrote_to() -> None:
    """A user's chat to someone accepts their message requests and makes them a contact
    (SPEC §7.3); anything else sent in bulk (a notification, which the relay refuses from
    a user anyway) does not."""

    async def scenario() -> None:
        relay = LoggingRelay()
        alice = await customer(relay)
        session_with(alice, "bob", BOB_SEED)
        session_with(alice, "carol", FAKE_SEED)
        notification = {"intent": frames.Intent.NOTIFICATION, "category": "utility"}
        await within(alice.send_many(["bob"], "not a chat", **notification))  # type: ignore[arg-type]
        assert not alice.store.has_written_to("bob")
        await within(alice.send_many(["carol"], "a chat"))
        assert alice.store.has_written_to("carol")
        await alice.close()

    run(scenario())


# --- Against a real relay ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_crash_between_encrypting_and_enqueueing_keeps_neither(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advanced sending chain and the outbox entry are one keystore write."""

    async def scenario() -> None:
        store: KeyStore = (
            MemoryKeyStore()
            if kind == "memory"
            else SqliteKeyStore.open(tmp_path / "alice.keys", "pw", create=True, **LOW_COST)
        )
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice", store=store)
            bob = await online(relay.url, "bob")
            inbox = Inbox(bob)
            await within(alice.send("bob", "one"))
            before = store.load_session("bob")

            def dies_on_the_outbox(entry: OutboxEntry) -> None:
                raise Crash("after encrypt, before the outbox entry")

            monkeypatch.setattr(store, "queue_outgoing", dies_on_the_outbox)
            with pytest.raises(Crash):
                await within(alice.send("bob", "two"))
            monkeypatch.undo()
            assert store.load_session("bob") == before
            assert store.outbox() == []
            await within(alice.send("bob", "three"))
            assert [(await inbox.next()).body for _ in range(2)] == ["one", "three"]
            await inbox.close()
            await alice.close()
            await bob.close()
        store.close()

    run(scenario())


def test_sends_to_a_new_contact_take_one_lock_that_is_gone_afterwards(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            first = [asyncio.create_task(alice.send("bob", f"m{i}")) for i in range(3)]
            await asyncio.sleep(0)
            assert len(alice.sender.locks) == 1  # the bundle fetch holds it, the others wait
            await within(asyncio.gather(*first))
            assert len(alice.sender.locks) == 0
            inbox = Inbox(bob)
            assert [(await inbox.next()).body for _ in range(3)] == ["m0", "m1", "m2"]
            await inbox.close()
            await alice.close()
            await bob.close()

    run(scenario())


def test_a_first_message_waits_out_a_paced_bundle_fetch_when_told_to_retry(
    tmp_path: Path,
) -> None:
    """A first message to a contact starts with a bundle fetch, which the relay paces
    too (SPEC §5.3, §10): right after a relay restart every account's buckets count as
    emptied when its connection ended (§10), so a message typed while the relay was away
    met a 402 there. ``rate_limit_retries`` waited out a 402 of the SEND only; the
    bundle fetch's went to the application, and the chat dropped the typed message
    ("refused: too fast"; test_chat's relay-restart test failed ~1 run in 6)."""

    async def scenario() -> None:
        async with relay_at(tmp_path, bundle_burst=1, bundle_rate_per_min=600.0) as relay:
            alice = await online(relay.url, "alice")
            for handle in ("bob", "carol"):
                await (await online(relay.url, handle)).close()
            await within(alice.send("bob", "takes the one token"))
            with pytest.raises(RateLimited):  # as before, without retries
                await within(alice.send("carol", "no retries"))
            await within(alice.send("carol", "waits ~0.1 s", rate_limit_retries=3))
            await alice.close()

    run(scenario())
