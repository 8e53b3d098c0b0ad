"""Whose keys we trust (client/trust.py): contacts' identity keys pinned on first use,
a change pending until the user approves it, safety numbers, the relay's key
(SPEC §3.3, §4.1, §13.8–13.9).

Unit tests on a key store alone; the same rules through the SDK against a real relay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from blindrelay.client.trust import IdentityState
from blindrelay.protocol.errors import (
    UntrustedIdentity,
)

from ..relays import relay_at
from .harness import (
    Inbox,
    online,
    run,
    within,
)

# --- Through the SDK, against a real relay ------------------------------------------------


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
