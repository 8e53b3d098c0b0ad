"""Keeping our prekeys published (client/prekeys.py, SPEC §5.4): topped up after each
WELCOME to what the relay lacks, and on PREKEYS_LOW, one upload at a time.
"""

from __future__ import annotations

from pathlib import Path

from blindrelay.client.keystore import (
    MemoryKeyStore,
)
from blindrelay.client.sessions import ONE_TIME_PREKEY_TARGET
from blindrelay.protocol import limits

from ..relays import relay_at
from .harness import (
    Inbox,
    back_online,
    online,
    run,
    within,
)

# --- Against a real relay ---------------------------------------------------------------


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
