"""The SDK end to end: real relays on 127.0.0.1 port 0, real sockets, no sleeps.

Every wait is on a future or an event with a timeout (``within``). Each test
runs its own event loop through ``run`` (the project has no asyncio pytest
plugin), starts its own relay in ``tmp_path`` and closes everything it opened.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from blindrelay.client.keystore import (
    IncomingMessage,
    KeyStore,
    MemoryKeyStore,
    OutboxEntry,
    SqliteKeyStore,
)
from blindrelay.client.sdk import Backoff, Client, ConnectionLost, RelayKeyChanged
from blindrelay.client.sessions import ONE_TIME_PREKEY_TARGET
from blindrelay.client.transport import tapped
from blindrelay.client.trust import IdentityState
from blindrelay.protocol import frames, limits
from blindrelay.protocol.content import ReceiptType
from blindrelay.protocol.errors import (
    HandleTaken,
    RateLimited,
    RecipientUnavailable,
    StoreUnavailable,
    UntrustedIdentity,
)
from blindrelay.server import relay as relay_module
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import serve
from blindrelay.server.store import open_store

from ..relays import relay_at
from .harness import (
    FAST,
    LOW_COST,
    Crash,
    Inbox,
    back_online,
    make_client,
    online,
    replace_relay_key,
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


class CrashingStore(SqliteKeyStore):
    """Dies in ``commit_incoming``: before it persists (``after=False``) or after."""

    after = True

    def commit_incoming(self, message: IncomingMessage, session_blob: bytes, **kw: Any) -> bool:
        if not self.after:
            raise Crash("before commit")
        super().commit_incoming(message, session_blob, **kw)
        raise Crash("after commit, before ack")


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
def test_a_crash_before_the_ack_redelivers_and_the_message_shows_once(
    tmp_path: Path, after_commit: bool
) -> None:
    async def scenario() -> None:
        path = tmp_path / "bob.keys"
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            bob = Client(SqliteKeyStore.open(path, "pw", create=True, **LOW_COST), owns_store=True)
            await within(bob.connect(relay.url))
            await within(bob.register("bob"))
            await bob.close()

            crashing = CrashingStore.open(path, "pw")
            crashing.after = after_commit
            bob = Client(crashing, owns_store=True, backoff=FAST)
            await within(bob.connect(relay.url))
            await within(bob.login())
            await within(alice.send("bob", "do not lose me"))
            with pytest.raises(ConnectionLost) as stopped:
                await within(anext(bob.messages()))
            assert isinstance(stopped.value.__cause__, Crash)
            await bob.close()

            bob = Client(SqliteKeyStore.open(path, "pw"), owns_store=True, backoff=FAST)
            await within(bob.connect(relay.url))
            await within(bob.login())
            assert bob.welcome is not None and bob.welcome.queued == 1  # never acknowledged
            await within(alice.send("bob", "after the crash"))
            inbox = Inbox(bob)
            assert [(await inbox.next()).body for _ in range(2)] == [
                "do not lose me",
                "after the crash",
            ]
            await inbox.close()
            await bob.close()

            # Both were acknowledged once persisted: nothing is left queued.
            bob = Client(SqliteKeyStore.open(path, "pw"), owns_store=True)
            await within(bob.connect(relay.url))
            await within(bob.login())
            assert bob.welcome is not None and bob.welcome.queued == 0
            await bob.close()
            await alice.close()

    run(scenario())


def test_a_redelivered_envelope_is_dropped_and_acknowledged(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            bob_store = MemoryKeyStore()
            bob = await online(relay.url, "bob", store=bob_store)
            await bob.close()
            alice = await online(relay.url, "alice")
            await within(alice.send("bob", "once"))
            # Bob's store already holds the message as processed, as after a
            # crash between commit and ack: the relay still has it queued.
            helper = make_client(bob_store)
            await within(helper.connect(relay.url))
            await within(helper.login())
            inbox = Inbox(helper)
            assert (await inbox.next()).body == "once"
            await inbox.close()
            await helper.close()
            for entry in bob_store.outbox():  # forget the delivered receipt, keep it simple
                bob_store.retire_outgoing(entry.msg_id)

            bob = await back_online(relay.url, bob_store)
            assert bob.welcome is not None and bob.welcome.queued == 0
            await bob.close()
            await alice.close()

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


def test_the_server_dropping_the_connection_is_survived_by_reconnecting(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            reconnected = asyncio.Event()
            bob = await online(relay.url, "bob", on_connected=lambda welcome: reconnected.set())
            reconnected.clear()
            await within(alice.send("bob", "before the drop"))
            inbox = Inbox(bob)
            assert (await inbox.next()).body == "before the drop"

            session = relay.ctx.sessions.get("bob")
            assert session is not None
            session.transport.close(1011, "test drop")
            await within(reconnected.wait())
            assert bob.connection_count == 2

            await within(alice.send("bob", "after the drop"))
            assert (await inbox.next()).body == "after the drop"
            await within(bob.send("alice", "still here"))
            assert (await Inbox(alice).next()).body == "still here"
            await inbox.close()
            await bob.close()
            await alice.close()

    run(scenario())


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


def test_an_identity_key_change_is_surfaced_before_the_next_send(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            changed: asyncio.Queue[str] = asyncio.Queue()
            alice = await online(relay.url, "alice", on_identity_change=changed.put_nowait)
            bob = await online(relay.url, "bob")
            alice_inbox, bob_inbox = Inbox(alice), Inbox(bob)
            await within(alice.send("bob", "hi"))
            assert (await bob_inbox.next()).body == "hi"
            await within(bob.send("alice", "hi alice"))
            assert (await alice_inbox.next()).body == "hi alice"
            number_before = alice.safety_number("bob")

            await within(bob.rotate_identity())
            await within(bob.send("alice", "new key, who dis"))

            assert await within(changed.get()) == "bob"
            assert alice.identity_change_pending("bob")
            with pytest.raises(UntrustedIdentity):
                await within(alice.send("bob", "must not leave"))
            assert alice.safety_number("bob") != number_before

            alice.approve_identity("bob")
            got = await alice_inbox.next()
            assert (got.body, got.identity) == ("new key, who dis", IdentityState.TRUSTED)
            await within(alice.send("bob", "ok, approved"))
            assert (await bob_inbox.next()).body == "ok, approved"
            assert alice.safety_number("bob") == bob.safety_number("alice")
            for closing in (alice_inbox, bob_inbox, alice, bob):
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


def test_relay_errors_raise_their_named_exceptions(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, bundle_burst=2, bundle_rate_per_min=1.0) as relay:
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            carol = await online(relay.url, "carol")

            with pytest.raises(RecipientUnavailable):
                await within(alice.send("nobody", "hello?"))
            await within(alice.send("bob", "hi"))  # second bundle fetch of the burst
            with pytest.raises(RateLimited) as limited:
                await within(alice.send("carol", "hi"))
            assert limited.value.retry_after_ms > 0

            taken = make_client()
            await within(taken.connect(relay.url))
            with pytest.raises(HandleTaken):
                await within(taken.register("alice"))
            await within(taken.register("dave"))  # a fresh challenge after the refusal
            await within(taken.send("bob", "hello from dave"))
            for client in (taken, alice, bob, carol):
                await client.close()

    run(scenario())


class OutageStore:
    """The relay's real store, whose first ``outages`` SENDs fail as in a store outage
    (SPEC §6.3: ERROR 902 with retry_after) — after the envelope was committed for the
    first, as when the connection to PostgreSQL drops between COMMIT and its answer."""

    def __init__(self, store: Any, outages: int, operation: str = "send") -> None:
        self.store = store
        self.outages = outages
        self.operation = operation
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def call(self, operation: str, args: Any, done: Any) -> None:
        if operation != self.operation or self.refused >= self.outages:
            self.store.call(operation, args, done)
            return
        self.refused += 1
        unavailable = StoreUnavailable(retry_after_ms=20)
        if self.refused == 1:  # committed, but the answer was lost with the connection
            self.store.call(operation, args, lambda ok, value: done(False, unavailable))
        else:
            done(False, unavailable)


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


def test_a_login_refused_by_a_store_outage_is_tried_again_on_a_new_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6.3 (issue 14): the automatic LOGIN after a reconnect answered 902 (the relay's
    store is down) stopped the client for good. 902 is transient: the client reconnects
    (the challenge is spent) after retry_after and logs in again."""
    stores: list[OutageStore] = []

    def open_with_outage(url: str, config: RelayConfig) -> Any:
        stores.append(OutageStore(open_store(url, config), outages=0, operation="login_counts"))
        return stores[-1]

    monkeypatch.setattr(relay_module, "open_store", open_with_outage)

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            reconnected = asyncio.Event()
            bob = await online(relay.url, "bob", on_connected=lambda welcome: reconnected.set())
            reconnected.clear()
            stores[0].outages = 2  # the next two logins meet the outage
            session = relay.ctx.sessions.get("bob")
            assert session is not None
            session.transport.close(1011, "test drop")
            await within(reconnected.wait())
            assert stores[0].refused == 2
            await within(alice.send("bob", "after the outage"))
            inbox = Inbox(bob)
            assert (await inbox.next()).body == "after the outage"
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


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=10.0)
    assert [backoff.delay(n, lambda: 1.0) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert [backoff.delay(n, lambda: 0.0) for n in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.delay(10_000, lambda: 1.0) == 10.0


def test_prekeys_are_topped_up_when_the_relay_says_they_run_low(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Alice alone drains bob's keys here: the per-requester, per-owner (SPEC §5.3) and
        # message-request (§7.3) limits are raised so one account can.
        limits_raised = {"bundle_burst": 200, "one_time_prekey_burst": 200,
                         "message_request_max": 200}  # fmt: skip
        async with relay_at(tmp_path, **limits_raised) as relay:
            bob_store = MemoryKeyStore()
            bob = await online(relay.url, "bob", store=bob_store)
            assert bob.welcome is not None and bob.welcome.one_time_prekeys == 0
            alice = await online(relay.url, "alice")
            fetches = ONE_TIME_PREKEY_TARGET - limits.PREKEY_LOW_WATER + 1
            for i in range(fetches):  # each send without a session fetches one bundle
                alice.store.delete_session("bob")
                await within(alice.send("bob", f"m{i}"))
            inbox = Inbox(bob)
            for _ in range(fetches):
                await inbox.next()
            await inbox.close()
            await bob.close()  # flushes the top-up bob sent on PREKEYS_LOW

            bob = await back_online(relay.url, bob_store)
            assert bob.welcome is not None
            assert bob.welcome.one_time_prekeys == ONE_TIME_PREKEY_TARGET
            await bob.close()
            await alice.close()

    run(scenario())


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


def test_a_relay_presenting_another_key_is_an_error_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    """Issue 13 item 11: the pinned relay key binds our statements (SPEC §7.4); another key
    is RelayKeyChanged from connect, before any frame of ours is written on that link,
    until the application deliberately accepts the new key."""

    async def scenario() -> None:
        alice_store = MemoryKeyStore()
        async with relay_at(tmp_path) as relay:
            old_key = relay.relay_key
            alice = await online(relay.url, "alice", store=alice_store)
            await alice.close()
            bob = await online(relay.url, "bob")
            await within(bob.send("alice", "queued while the key changes"))
            await bob.close()
        replace_relay_key(tmp_path / "relay.db")
        async with relay_at(tmp_path) as relay:
            assert relay.relay_key != old_key
            written: list[bytes] = []
            alice = make_client(
                alice_store,
                open_transport=tapped(lambda way, data: written.append(data) if way == "out" else None),
            )
            with pytest.raises(RelayKeyChanged) as changed:
                await within(alice.connect(relay.url))
            assert (changed.value.pinned, changed.value.presented) == (old_key, relay.relay_key)
            assert written == []  # no LOGIN, no ACK, no resend on that link
            assert alice.relay_key == old_key  # nothing changed by itself

            alice.accept_relay_key(relay.relay_key)
            await within(alice.connect(relay.url))
            await within(alice.login())
            assert alice.relay_key == relay.relay_key
            assert alice.welcome is not None and alice.welcome.queued == 1  # never acked
            inbox = Inbox(alice)
            assert (await inbox.next()).body == "queued while the key changes"
            await inbox.close()
            await alice.close()

    run(scenario())


def test_a_reconnect_to_a_relay_with_another_key_stops_the_client_with_the_error(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        relay = await serve(RelayConfig(host="127.0.0.1", port=0, db_path=tmp_path / "relay.db"))
        port = int(relay.url.rsplit(":", 1)[1])  # the reconnect finds the new relay there
        alice = await online(relay.url, "alice")
        await relay.close()
        replace_relay_key(tmp_path / "relay.db")
        relay = await serve(
            RelayConfig(host="127.0.0.1", port=port, db_path=tmp_path / "relay.db")
        )
        try:
            with pytest.raises(RelayKeyChanged):
                await within(alice.wait_online())
            with pytest.raises(RelayKeyChanged):
                await within(alice.send("alice", "to myself"))
            alice.accept_relay_key(relay.relay_key)
            await within(alice.connect(relay.url))  # logs in again by itself
            await within(alice.wait_online())
            assert alice.connection_count == 2
            await alice.close()
        finally:
            await relay.close()

    run(scenario())
