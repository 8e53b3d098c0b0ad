"""Messages held from strangers are bounded in all, not only per sender (SPEC §13.8, T66).

A sender whose key change awaits the user has its messages kept in the profile and
acknowledged (T18), up to ``MAX_HELD_PER_SENDER`` per sender — and nothing bounded the
senders. Any throwaway account is a stranger whose first message pins its key; its next
prekey message names another key, and from then on every message of it is held as it
came, without being decrypted, until the person approves or blocks: up to 100 envelopes
of up to 40 KiB (~4 MB) per account writing to a business, 19 (~0.8 MB, the relay's
``MESSAGE_REQUEST_MAX``) per account writing to a user, for good — ten times what one
account could make a client keep in skipped keys before T52 bounded those. Now strangers'
held messages share ``MAX_HELD_FROM_STRANGERS``; a contact's are never refused for them.
"""

from __future__ import annotations

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import MAX_HELD_FROM_STRANGERS, MAX_HELD_PER_SENDER, HeldMessages

from .fake_relay import URL, FakeRelay
from .harness import Inbox, online, run
from .key_changes import Pusher, account, bundle_of

STRANGERS = MAX_HELD_FROM_STRANGERS // MAX_HELD_PER_SENDER + 1
"""Enough strangers, each holding its own bound, to pass the bound of them all."""


def test_strangers_together_hold_no_more_than_the_bound_and_a_contact_still_holds() -> None:
    async def scenario() -> None:
        relay = FakeRelay()
        changed: list[str] = []
        bob = await online(
            URL, "bob", store=MemoryKeyStore(), open_transport=relay.open,
            on_identity_change=changed.append,
        )  # fmt: skip
        inbox = Inbox(bob)
        wire = Pusher(relay.ends[-1])
        bundle = bundle_of(bob)

        strangers = [f"stranger{i}" for i in range(STRANGERS)]
        for handle in strangers:
            await wire.message(account(handle, bundle), "bob", "hi")  # pins its key
            new_key = account(handle, bundle)  # the same account on another key
            for n in range(MAX_HELD_PER_SENDER):
                await wire.message(new_key, "bob", f"held {n}")
        assert changed == strangers  # every one announced, and every DELIVER acknowledged
        held = [bob.held_messages(handle) for handle in strangers]
        assert sum(h.held for h in held) == MAX_HELD_FROM_STRANGERS  # before: all of them
        assert sum(h.dropped for h in held) == STRANGERS * MAX_HELD_PER_SENDER - sum(
            h.held for h in held
        )
        assert len(bob.store.pending_messages()) == STRANGERS  # the first messages only

        # A contact (bob accepted her request) on a new phone: held whatever strangers hold.
        carol = account("carol", bundle)
        await wire.message(carol, "bob", "hello bob")
        assert (await inbox.next()).sender == "stranger0"
        bob.requests.accept("carol")
        await wire.message(account("carol", bundle), "bob", "new phone")
        assert bob.held_messages("carol") == HeldMessages(1, 0)

        # Blocking a stranger makes room for the next stranger's key change.
        await bob.block(strangers[0])
        late = "stranger-late"
        await wire.message(account(late, bundle), "bob", "hi")
        await wire.message(account(late, bundle), "bob", "new key")
        assert bob.held_messages(late) == HeldMessages(1, 0)
        await inbox.close()
        await bob.close()

    run(scenario())
