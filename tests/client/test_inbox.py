"""The inbox (client/inbox.py): a DELIVER decrypted and persisted before its ACK, a
redelivery recognised and acknowledged again (SPEC §6.4, §6.5).

Messages held while a key change awaits the user are the scenario of test_held.py;
what the application reads and when it is acknowledged, test_reading.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from blindrelay.client.keystore import (
    IncomingMessage,
    MemoryKeyStore,
    SqliteKeyStore,
)
from blindrelay.client.sdk import Client, ConnectionLost
from blindrelay.protocol import frames

from ..relays import relay_at
from .harness import (
    FAST,
    LOW_COST,
    Crash,
    Inbox,
    back_online,
    make_client,
    online,
    run,
    within,
)
from .log_relay import LoggingRelay, Writer, customer


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


@pytest.mark.parametrize("auto", [True, False], ids=["receipts", "no-receipts"])
def test_a_delivered_receipt_goes_only_when_the_application_wants_them(auto: bool) -> None:
    """``auto_delivered_receipts=False`` is the application's word that the SDK tells no
    sender when its message arrived (SPEC §6.2): a contact's message gets no receipt, and
    the reply after it is the only SEND."""

    async def scenario() -> None:
        relay = LoggingRelay()
        alice = await customer(relay, auto_delivered_receipts=auto)
        alice.requests.accept("bob")  # a contact: no message request
        bob = Writer(relay, alice, "bob", b"\x42" * 32)
        bob.deliver("hello", "user")
        inbox = Inbox(alice)
        assert (await inbox.next()).body == "hello"
        await within(alice.send("bob", "hi"))
        sends = relay.ends[-1].received(frames.Send)
        assert len(sends) == (2 if auto else 1)
        await inbox.close()
        await alice.close()

    run(scenario())
