"""Messages held while a contact's identity key change awaits the user (SPEC §3.3, §6.5).

Issue 13 item 3: the SDK used to hold them unacknowledged, and the relay keeps at
most DELIVERY_WINDOW unacknowledged deliveries in flight, so one sender naming
another identity key in 256 envelopes stopped all delivery to the victim. Now they
are persisted in the keystore and acknowledged, up to MAX_HELD_PER_SENDER per
sender. The forged envelopes are real prekey messages made by another identity key
under the attacker's own account, over real sockets to an in-process relay.
"""

from __future__ import annotations

from pathlib import Path

from blindrelay.client.keystore import MemoryKeyStore, OurIdentity
from blindrelay.client.sdk import MAX_HELD_PER_SENDER, Client, HeldMessages
from blindrelay.client.sessions import SessionManager
from blindrelay.protocol import frames
from blindrelay.protocol.content import Content, Text, encode_content
from blindrelay.protocol.crypto.keys import IdentityKeyPair

from ..relays import relay_at
from ..server.conftest import RawClient
from .harness import FAST, LOW_COST, Inbox, back_online, online, run, within

FORGED = 300
"""More than the relay's DELIVERY_WINDOW (256) unacknowledged deliveries in flight."""
ROOMY = {"send_burst_pair": 1000, "send_burst_user": 1000, "message_request_max": 1000}
"""Relay limits that let the attacker's 300 envelopes through at once. A stranger gets only
MESSAGE_REQUEST_MAX envelopes to bob (SPEC §7.3); raising it stands for mallory being a
contact bob once wrote to, who can send any number."""


class Attacker:
    """Account ``mallory`` on raw frames: one genuine first message, then forgeries."""

    def __init__(self, raw: RawClient, genuine: SessionManager, forger: SessionManager) -> None:
        self.raw, self.genuine, self.forger = raw, genuine, forger

    @classmethod
    async def registered(cls, url: str, target: str) -> Attacker:
        raw = await RawClient.open(url)
        await raw.register("mallory")
        seed = bytes(raw.key)
        genuine = SessionManager(MemoryKeyStore())
        genuine.store.set_identity(
            OurIdentity("mallory", "user", url, seed, IdentityKeyPair.from_seed(seed).public)
        )
        forger = SessionManager(MemoryKeyStore())
        forger.create_identity("mallory", "user", url)  # another identity key, same handle
        for sessions in (genuine, forger):  # each its own one-time prekey
            bundle = await raw.request(lambda rid: frames.BundleFetch(id=rid, handle=target))
            assert isinstance(bundle, frames.Bundle)
            sessions.start_session(bundle)
        return cls(raw, genuine, forger)

    async def send(self, sessions: SessionManager, to: str, text: str) -> None:
        msg_id = sessions._rng(16)
        envelope = sessions.encrypt(to, encode_content(Content(msg_id, Text(text))))
        sent = await self.raw.send_message(to, envelope, msg_id)
        assert isinstance(sent, frames.Sent), sent


def test_forged_key_changes_from_one_sender_never_freeze_the_inbox(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, **ROOMY) as relay:
            changed: list[str] = []
            bob_store = MemoryKeyStore()
            bob = await online(relay.url, "bob", store=bob_store, on_identity_change=changed.append)
            carol = await online(relay.url, "carol")
            inbox = Inbox(bob)
            mallory = await Attacker.registered(relay.url, "bob")
            await mallory.send(mallory.genuine, "bob", "hi, it is mallory")
            assert (await inbox.next()).body == "hi, it is mallory"  # bob pinned her key

            for i in range(FORGED):
                await mallory.send(mallory.forger, "bob", f"forged {i}")
            await within(carol.send("bob", "an honest message"))
            got = await inbox.next()
            assert (got.sender, got.body) == ("carol", "an honest message")
            assert changed == ["mallory"]  # announced once, not per envelope
            assert bob.identity_change_pending("mallory")
            assert bob.held_messages("mallory") == HeldMessages(
                held=MAX_HELD_PER_SENDER, dropped=FORGED - MAX_HELD_PER_SENDER
            )
            await inbox.close()
            await bob.close()

            bob = await back_online(relay.url, bob_store)  # across a reconnect
            assert bob.welcome is not None and bob.welcome.queued == 0  # all acknowledged
            await mallory.send(mallory.forger, "bob", "one more")
            await within(carol.send("bob", "after the reconnect"))
            inbox = Inbox(bob)
            got = await inbox.next()
            assert (got.sender, got.body) == ("carol", "after the reconnect")
            assert bob.held_messages("mallory").dropped == FORGED - MAX_HELD_PER_SENDER + 1

            await within(bob.block("mallory"))  # blocking discards what was held
            assert bob.held_messages("mallory") == HeldMessages(0, 0)
            for closing in (inbox, bob, carol, mallory.raw):
                await closing.close()

    run(scenario())


def test_approving_releases_held_messages_in_order_also_after_a_restart(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        path = tmp_path / "bob.keys"
        async with relay_at(tmp_path) as relay:
            bob = Client.open(path, "pw", backoff=FAST, **LOW_COST)
            await within(bob.connect(relay.url))
            await within(bob.register("bob"))
            inbox = Inbox(bob)
            mallory = await Attacker.registered(relay.url, "bob")
            await mallory.send(mallory.genuine, "bob", "hello")
            assert (await inbox.next()).body == "hello"
            for i in range(5):
                await mallory.send(mallory.forger, "bob", f"new phone {i}")
            carol = await online(relay.url, "carol")
            await within(carol.send("bob", "barrier"))
            assert (await inbox.next()).body == "barrier"  # the five came before it
            assert bob.held_messages("mallory") == HeldMessages(5, 0)
            await inbox.close()
            await bob.close()

            bob = Client.open(path, "pw", backoff=FAST)  # a restart: held on disk
            assert bob.held_messages("mallory") == HeldMessages(5, 0)
            bob.approve_identity("mallory")
            assert bob.held_messages("mallory") == HeldMessages(0, 0)
            inbox = Inbox(bob)
            assert [(await inbox.next()).body for _ in range(5)] == [
                f"new phone {i}" for i in range(5)
            ]
            await within(bob.connect(relay.url))
            await within(bob.login())
            await mallory.send(mallory.forger, "bob", "and now directly")
            assert (await inbox.next()).body == "and now directly"
            for closing in (inbox, bob, carol, mallory.raw):
                await closing.close()

    run(scenario())


def test_a_held_sender_s_messages_keep_their_order_behind_the_held_one(tmp_path: Path) -> None:
    """After the key change, even messages that would decrypt wait behind the held ones."""

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            bob = await online(relay.url, "bob")
            inbox = Inbox(bob)
            mallory = await Attacker.registered(relay.url, "bob")
            await mallory.send(mallory.genuine, "bob", "one")
            assert (await inbox.next()).body == "one"
            await mallory.send(mallory.forger, "bob", "two (new key)")
            await mallory.send(mallory.genuine, "bob", "three (old session)")
            carol = await online(relay.url, "carol")
            await within(carol.send("bob", "barrier"))
            assert (await inbox.next()).body == "barrier"
            assert bob.held_messages("mallory") == HeldMessages(2, 0)
            bob.approve_identity("mallory")
            assert (await inbox.next()).body == "two (new key)"
            # "three" is a prekey message of the old key's session, whose one-time prekey
            # "one" spent, and that session went with the approval: nothing can read it
            # any more, so it is dropped as undecryptable, not offered as one more key
            # change that approving would still not show (T67); the rest of the inbox flows.
            assert bob.held_messages("mallory") == HeldMessages(0, 0)
            assert not bob.identity_change_pending("mallory")
            await within(carol.send("bob", "still flowing"))
            assert (await inbox.next()).body == "still flowing"
            for closing in (inbox, bob, carol, mallory.raw):
                await closing.close()

    run(scenario())



def test_held_messages_left_by_a_crash_after_approval_are_released_at_the_next_login(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            bob_store = MemoryKeyStore()
            bob = await online(relay.url, "bob", store=bob_store)
            inbox = Inbox(bob)
            mallory = await Attacker.registered(relay.url, "bob")
            await mallory.send(mallory.genuine, "bob", "hello")
            assert (await inbox.next()).body == "hello"
            await mallory.send(mallory.forger, "bob", "held one")
            carol = await online(relay.url, "carol")
            await within(carol.send("bob", "barrier"))
            assert (await inbox.next()).body == "barrier"
            await inbox.close()
            await bob.close()
            # The approval was stored, then the process died before releasing them.
            bob.trust.approve("mallory")

            bob = await back_online(relay.url, bob_store)
            inbox = Inbox(bob)
            assert (await inbox.next()).body == "held one"
            assert bob.held_messages("mallory") == HeldMessages(0, 0)
            for closing in (inbox, bob, carol, mallory.raw):
                await closing.close()

    run(scenario())


def test_messages_held_from_a_sender_then_blocked_are_gone_for_good(tmp_path: Path) -> None:
    """Blocking a sender whose messages wait for a key decision discards them from the
    profile, not only from this run: after a restart none is held, and approving the key
    shows none of them."""

    async def scenario() -> None:
        path = tmp_path / "bob.keys"
        async with relay_at(tmp_path) as relay:
            bob = Client.open(path, "pw", backoff=FAST, **LOW_COST)
            await within(bob.connect(relay.url))
            await within(bob.register("bob"))
            inbox = Inbox(bob)
            mallory = await Attacker.registered(relay.url, "bob")
            await mallory.send(mallory.genuine, "bob", "hello")
            assert (await inbox.next()).body == "hello"
            for i in range(3):
                await mallory.send(mallory.forger, "bob", f"new phone {i}")
            carol = await online(relay.url, "carol")
            await within(carol.send("bob", "barrier"))
            assert (await inbox.next()).body == "barrier"
            assert bob.held_messages("mallory") == HeldMessages(3, 0)
            await within(bob.block("mallory"))
            assert bob.held_messages("mallory") == HeldMessages(0, 0)
            await inbox.close()
            await bob.close()

            bob = Client.open(path, "pw", backoff=FAST)  # a restart
            assert bob.held_messages("mallory") == HeldMessages(0, 0)
            bob.approve_identity("mallory")
            assert bob.store.pending_messages() == []
            await bob.close()
            for closing in (carol, mallory.raw):
                await closing.close()

    run(scenario())
