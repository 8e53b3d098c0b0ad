"""Keeping our prekeys published (client/prekeys.py, SPEC §5.4): topped up after each
WELCOME to what the relay lacks, and on PREKEYS_LOW, one upload at a time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from blindrelay.client.keystore import (
    MemoryKeyStore,
)
from blindrelay.client.prekeys import PrekeyPublisher
from blindrelay.client.sessions import ONE_TIME_PREKEY_TARGET, TOP_UP_BELOW, SessionManager
from blindrelay.client.transport import ConnectionLost
from blindrelay.protocol import frames, limits

from ..relays import relay_at
from .fake_relay import welcome
from .harness import (
    Inbox,
    Requests,
    back_online,
    online,
    run,
    within,
)


def publisher() -> tuple[PrekeyPublisher, SessionManager]:
    sessions = SessionManager(MemoryKeyStore())
    sessions.create_identity("alice", "user")
    return PrekeyPublisher(sessions), sessions


async def test_after_welcome_the_relay_is_topped_up_to_the_target_and_awaited() -> None:
    prekeys, sessions = publisher()
    conn = Requests()
    welcomed = asyncio.create_task(
        prekeys.welcomed(
            conn, welcome(1, "alice", "user", one_time_prekeys=5, has_signed_prekey=False)
        )
    )  # type: ignore[arg-type]
    await asyncio.sleep(0)
    ((upload, answer),) = conn.sent
    assert upload.signed_prekey is not None
    assert len(upload.one_time) == ONE_TIME_PREKEY_TARGET - 5
    assert {r.key_id for r in upload.one_time} <= set(sessions.store.one_time_prekey_ids())
    assert not welcomed.done()  # online only once the relay took them
    answer.set_result(frames.Ok(re=upload.id))
    await within(welcomed)


async def test_a_relay_holding_enough_prekeys_gets_no_upload() -> None:
    prekeys, _ = publisher()
    conn = Requests()
    await within(
        prekeys.welcomed(conn, welcome(1, "alice", "user", one_time_prekeys=ONE_TIME_PREKEY_TARGET))
    )  # type: ignore[arg-type]
    prekeys.running_low(conn, TOP_UP_BELOW)  # type: ignore[arg-type]
    assert conn.sent == []


async def test_prekeys_low_uploads_one_top_up_at_a_time() -> None:
    prekeys, _ = publisher()
    conn = Requests()
    prekeys.running_low(conn, limits.PREKEY_LOW_WATER)  # type: ignore[arg-type]
    prekeys.running_low(conn, limits.PREKEY_LOW_WATER - 1)  # type: ignore[arg-type]
    ((upload, answer),) = conn.sent  # the second waits for the first
    assert upload.signed_prekey is None
    assert len(upload.one_time) == ONE_TIME_PREKEY_TARGET - limits.PREKEY_LOW_WATER
    answer.set_exception(ConnectionLost("dropped"))  # a failed one ends the top-up too
    await asyncio.sleep(0)
    prekeys.running_low(conn, 3)  # type: ignore[arg-type]
    assert len(conn.sent) == 2 and len(conn.sent[1][0].one_time) == ONE_TIME_PREKEY_TARGET - 3


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
