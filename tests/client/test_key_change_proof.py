"""A prekey message's new identity key is offered for approval only once the message
decrypted under it (SPEC §13.8, T67).

The attack: one key stands for one handle (SPEC §13.8), and a key change in a prekey
message was recorded as the pending change before any cryptography. So mallory, an
account bob knows, sent a prekey message under her own handle presenting carol's public
identity key (anyone can fetch it: a bundle, the log of a business) — a message she
cannot make, as X3DH needs that key's private half. Bob was asked about "mallory's new
key"; once he approved it (a friend on a new phone), carol's key was pinned for mallory,
and from then on every message of carol was refused as ``IdentityKeyReused`` —
acknowledged, dropped, never shown — and every send to her raised it, until mallory's
key changed again. Now such a message is undecryptable and dropped like any (nothing
recorded, nothing asked); a genuine key change is offered as before.
"""

from __future__ import annotations

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import HeldMessages

from .fake_relay import URL, FakeRelay
from .harness import Inbox, online, run
from .key_changes import Pusher, account, bundle_of, deliver, envelope

IDENTITY_KEY = slice(2, 34)
"""Where a prekey message carries its sender's identity key (SPEC §13.6)."""


def test_a_key_the_sender_does_not_hold_is_never_offered_for_approval() -> None:
    async def scenario() -> None:
        relay = FakeRelay()
        asked: list[str] = []
        bob = await online(
            URL, "bob", store=MemoryKeyStore(), open_transport=relay.open,
            on_identity_change=asked.append,
        )  # fmt: skip
        inbox = Inbox(bob)
        wire = Pusher(relay.ends[-1])
        bundle = bundle_of(bob)
        carol = account("carol", bundle)  # whose key is public, and unknown to bob yet
        await wire.message(account("mallory", bundle), "bob", "hi, it is mallory")
        assert (await inbox.next()).body == "hi, it is mallory"

        # Mallory's own prekey message, with carol's identity key in place of hers.
        msg_id, body = envelope(account("mallory", bundle), "bob", "my new phone")
        carols_key = carol.identity.identity_public
        forged = body[: IDENTITY_KEY.start] + carols_key + body[IDENTITY_KEY.stop :]
        await wire.push(deliver("mallory", msg_id, forged))  # acknowledged
        assert asked == []  # before: ["mallory"], carol's key the pending change
        assert not bob.identity_change_pending("mallory")
        assert bob.held_messages("mallory") == HeldMessages(0, 0)
        for handle in asked:  # the person approves what she is asked (before: carol's key)
            bob.approve_identity(handle)

        await wire.message(carol, "bob", "hello from carol")
        got = await inbox.next()  # before, once approved: IdentityKeyReused, never shown
        assert (got.sender, got.body) == ("carol", "hello from carol")
        assert bob.trust.pinned_key("carol") == carols_key

        # A real key change is still offered, and approving it shows what was held.
        await wire.message(account("mallory", bundle), "bob", "really a new phone")
        assert asked == ["mallory"]
        assert bob.held_messages("mallory") == HeldMessages(1, 0)
        bob.approve_identity("mallory")
        assert (await inbox.next()).body == "really a new phone"
        await inbox.close()
        await bob.close()

    run(scenario())
