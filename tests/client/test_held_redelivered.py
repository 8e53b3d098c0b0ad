"""A DELIVER redelivered while its sender's messages are held is not held again (SPEC §3.3,
§6.4.3).

Noticed in review (task H94): a sender whose identity key change awaits the user
has its messages held in the keystore and acknowledged, up to ``MAX_HELD_PER_SENDER`` per
sender and ``MAX_HELD_FROM_STRANGERS`` from strangers in all (T66). An ACK lost with its
connection has the relay deliver the same DELIVER again on the next one (§6.4.3), and the
inbox held it once more: another held slot taken, ``held_messages`` counting it twice — and
so did a message processed before the hold began whose ACK was lost. Releasing never showed
a copy twice (each is deduplicated when released), but the copies took the room of
messages the sender would otherwise have had kept. Now a redelivery of a message held or
processed already is acknowledged and dropped; a chat and a statement under one msg_id
(a statement's msg_id is its nonce, chosen apart from its signer's chats) are two messages.
"""

from __future__ import annotations

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import HeldMessages
from blindrelay.protocol import codec, frames
from blindrelay.protocol.crypto.keys import IdentityKeyPair

from ..relays import T0
from .fake_relay import URL, FakeRelay
from .harness import Inbox, back_online, online, run
from .key_changes import Pusher, account, bundle_of, deliver, envelope, forwarded_statement

CAROL = IdentityKeyPair.from_seed(b"\xca" * 32)
CAROL_NEW_PHONE = IdentityKeyPair.from_seed(b"\xcb" * 32)


def test_held_messages_redelivered_are_acknowledged_and_not_held_again() -> None:
    async def scenario() -> None:
        relay, store = FakeRelay(), MemoryKeyStore()
        bob = await online(URL, "bob", store=store, open_transport=relay.open)
        inbox = Inbox(bob)
        wire = Pusher(relay.ends[-1])
        bundle = bundle_of(bob)
        await wire.message(account("mallory", bundle), "bob", "hi")
        assert (await inbox.next()).body == "hi"  # her key pinned
        new_phone = account("mallory", bundle)  # the same account on another key
        held = [deliver("mallory", *envelope(new_phone, "bob", f"held {n}")) for n in range(3)]
        for frame in held:
            await wire.push(frame)
        assert bob.held_messages("mallory") == HeldMessages(3, 0)

        for frame in held:  # their ACKs were lost: the next connection brings them again
            await wire.push(frame)  # acknowledged again
        assert bob.held_messages("mallory") == HeldMessages(3, 0)  # before: (6, 0)
        assert len(bob.store.held_messages("mallory")) == 3  # before: 6

        await inbox.close()
        await bob.close()
        bob = await back_online(URL, store, open_transport=relay.open)  # a restart
        inbox = Inbox(bob)
        wire = Pusher(relay.ends[-1])
        await wire.push(held[1])  # known from the keystore now
        assert bob.held_messages("mallory") == HeldMessages(3, 0)  # before: (7, 0)

        bob.approve_identity("mallory")
        assert bob.held_messages("mallory") == HeldMessages(0, 0)
        await wire.message(account("carol", bundle), "bob", "barrier")
        shown = [(await inbox.next()).body for _ in range(4)]
        assert shown == ["held 0", "held 1", "held 2", "barrier"]  # each once
        await inbox.close()
        await bob.close()

    run(scenario())


def test_a_message_processed_before_the_hold_and_redelivered_is_not_held() -> None:
    async def scenario() -> None:
        relay = FakeRelay()
        bob = await online(URL, "bob", store=MemoryKeyStore(), open_transport=relay.open)
        inbox = Inbox(bob)
        wire = Pusher(relay.ends[-1])
        bundle = bundle_of(bob)
        first = deliver("mallory", *envelope(account("mallory", bundle), "bob", "hi"))
        await wire.push(first)
        assert (await inbox.next()).body == "hi"
        await wire.message(account("mallory", bundle), "bob", "new phone")
        assert bob.held_messages("mallory") == HeldMessages(1, 0)

        await wire.push(first)  # its ACK was lost
        assert bob.held_messages("mallory") == HeldMessages(1, 0)  # before: (2, 0)
        bob.approve_identity("mallory")
        await wire.message(account("carol", bundle), "bob", "barrier")
        assert [(await inbox.next()).body for _ in range(2)] == ["new phone", "barrier"]
        await inbox.close()
        await bob.close()

    run(scenario())


def test_a_held_statement_redelivered_is_not_held_again_and_a_chat_of_its_id_is() -> None:
    async def scenario() -> None:
        relay = FakeRelay()
        shop = await online(
            URL, "shop", "business", store=MemoryKeyStore(), open_transport=relay.open
        )
        wire = Pusher(relay.ends[-1])
        grant = forwarded_statement("grant", "carol", CAROL, "shop", T0)
        await wire.push(grant)  # carol's key pinned
        revoke = forwarded_statement("revoke", "carol", CAROL_NEW_PHONE, "shop", T0 + 60_000)
        await wire.push(revoke)  # under another key: held
        assert shop.held_messages("carol") == HeldMessages(1, 0)

        await wire.push(revoke)  # redelivered
        assert shop.held_messages("carol") == HeldMessages(1, 0)  # before: (2, 0)
        await wire.push(grant)  # kept before the hold, redelivered
        assert shop.held_messages("carol") == HeldMessages(1, 0)  # before: (2, 0)
        # A chat whose msg_id is the revoke's nonce is another message: held too.
        _, body = envelope(account("carol", bundle_of(shop)), "shop", "hello")
        await wire.push(deliver("carol", revoke.msg_id, body))
        assert shop.held_messages("carol") == HeldMessages(2, 0)
        kinds = [frames.Intent.STATEMENT, frames.Intent.CHAT]
        assert [h.intent for h in map(_decoded, shop.store.held_messages("carol"))] == kinds
        await shop.close()

    run(scenario())


def _decoded(record: bytes) -> frames.Deliver:
    frame = codec.decode(record)
    assert isinstance(frame, frames.Deliver)
    return frame
