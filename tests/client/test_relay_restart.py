"""What the SDK asks of the relay by itself right after a relay restart (SPEC §10).

A restarted relay counts a returning account's buckets as emptied when its previous
connection ended ("moving between processes never gives more tokens than waiting
would"), so a client that reconnects within a second meets ERROR 402 RATE_LIMITED on
its first requests. Each test restarts a relay on the same port and database with a
clock that moves only when the client is seen to meet its 402 (a wire tap), so the
402 happens every run and the retry after it finds a token.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Client
from blindrelay.client.transport import OpenTransport, tapped
from blindrelay.protocol import frames
from blindrelay.protocol.codec import decode
from blindrelay.protocol.content import ReceiptType
from blindrelay.protocol.errors import ErrorCode
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay, serve

from ..relays import MANY_REGISTRATIONS, QUICK_TREE_HEADS, FakeClock
from .harness import Inbox, back_online, online, run, within


def free_port() -> int:
    """A loopback port for the relay to bind again after its restart (the SDK
    reconnects to the URL it was given)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def relay_on(
    db: Path, port: int, clock: FakeClock, **config: Any
) -> AsyncIterator[RunningRelay]:
    relay = await serve(
        RelayConfig(host="127.0.0.1", port=port, db_path=db, **MANY_REGISTRATIONS,
                    **QUICK_TREE_HEADS, **config),
        clock=clock,
    )  # fmt: skip
    try:
        yield relay
    finally:
        await relay.close()


def refill_at_402(clock: FakeClock, seen: list[int]) -> OpenTransport:
    """Connections on which each 402 the client reads moves the relay's clock a minute
    on (every bucket full again), after recording it in ``seen``."""

    def tap(direction: str, data: bytes) -> None:
        if direction != "in":
            return
        frame = decode(data)
        if isinstance(frame, frames.Error) and frame.code == ErrorCode.RATE_LIMITED:
            seen.append(frame.code)
            clock.advance(60_000)

    return tapped(tap)


async def reconnected(client: Client, count: int) -> None:
    """Until ``client`` was online ``count`` times, or its link stopped for good."""
    while client.connection_count < count and not client.link.failed:
        await asyncio.sleep(0.01)


def test_a_login_that_meets_a_402_on_its_prekey_top_up_stays_online_and_tops_up_after(
    tmp_path: Path,
) -> None:
    """Reproduced: bob's relay holds fewer one-time prekeys than the SDK tops up from
    (others fetched his bundle); the relay restarts, bob reconnects, and the top-up the
    WELCOME calls for meets 402 (the prekey bucket, 6 a minute, counts as emptied when
    his last connection ended). The RateLimited went out of the login and stopped the
    link for good: bob never came back online, and no prekeys were uploaded. Now the
    login goes on and the upload is sent again after ``retry_after``."""

    async def scenario() -> None:
        db, port = tmp_path / "relay.db", free_port()
        url, clock, seen = f"ws://127.0.0.1:{port}", FakeClock(time.time_ns() // 1_000_000), []
        store = MemoryKeyStore()
        drainable = {"one_time_prekey_burst": 1000, "bundle_burst": 1000,
                     "prekeys_upload_rate_per_min": 6000.0}  # retry_after 10 ms  # fmt: skip
        async with relay_on(db, port, clock, **drainable):
            bob = await online(url, "bob", store=store, open_transport=refill_at_402(clock, seen))
            alice = await online(url, "alice")
            for _ in range(51):  # 100 uploaded at registration; the SDK tops up below 50
                await within(
                    alice.link.request(lambda rid: frames.BundleFetch(id=rid, handle="bob"))
                )
            await alice.close()
        async with relay_on(db, port, clock, **drainable):
            await within(reconnected(bob, 2))
            assert not bob.link.failed  # stopped for good by the RateLimited
            assert seen == [ErrorCode.RATE_LIMITED]
            await within(bob.prekeys.settled())
            await bob.close()
            clock.advance(60_000)
            bob = await back_online(url, store)
            welcome = bob.welcome
            assert welcome is not None and welcome.one_time_prekeys == 100
            await bob.close()

    run(scenario())


def test_a_delivered_receipt_that_meets_a_402_after_a_restart_is_sent_again(
    tmp_path: Path,
) -> None:
    """Reproduced: the relay restarts, bob reconnects, alice (whose buckets are full)
    writes to him. The delivered receipt bob's SDK sends by itself met 402 (his SEND
    bucket counts as emptied when his last connection ended), and the outbox gave up
    on it at once: logged at INFO, never sent, and alice never saw her message
    delivered. Now it waits out the 402 as a send told to retry does."""

    async def scenario() -> None:
        db, port = tmp_path / "relay.db", free_port()
        url, clock, seen = f"ws://127.0.0.1:{port}", FakeClock(time.time_ns() // 1_000_000), []
        alice_store = MemoryKeyStore()
        async with relay_on(db, port, clock):
            alice = await online(url, "alice", store=alice_store)
            bob = await online(url, "bob", open_transport=refill_at_402(clock, seen))
            alice_inbox, bob_inbox = Inbox(alice), Inbox(bob)
            await within(bob.send("alice", "hi"))  # not a message request to bob: receipts
            assert (await alice_inbox.next()).body == "hi"
            await within(alice.send("bob", "hello"))
            assert (await bob_inbox.next()).body == "hello"
            assert (await alice_inbox.next_receipt()).type == ReceiptType.DELIVERED
            await alice_inbox.close()
            await alice.close()
            clock.advance(60_000)  # alice's buckets full again; bob's stay in use
        async with relay_on(db, port, clock):
            await within(reconnected(bob, 2))
            alice = await back_online(url, alice_store)
            alice_inbox = Inbox(alice)
            await within(alice.send("bob", "after the restart"))
            assert (await bob_inbox.next()).body == "after the restart"
            receipt = await alice_inbox.next_receipt()
            assert seen == [ErrorCode.RATE_LIMITED]
            assert receipt.type == ReceiptType.DELIVERED
            await alice_inbox.close()
            await bob_inbox.close()
            await alice.close()
            await bob.close()

    run(scenario())
