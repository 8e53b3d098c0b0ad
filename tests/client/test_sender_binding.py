"""The sender's handle is bound end to end, through a real relay (SPEC §13.3, §13.8).

The attack (issue 13, item 8): mallory captures alice's first (prekey) message
to carol — on the wire, as a tap on alice's connection sees it — and sends the
same envelope, under the same msg_id, as his own SEND to carol. The relay
delivers it with sender "mallory". Before the fix carol decrypted it, showed it
as mallory's and pinned alice's identity key under "mallory".

Carol's one-time prekeys are drained, the case where a first message can be
replayed at all (SPEC §13.3); with one, the used prekey already refused the copy.
Mallory speaks raw frames (the conformance suite's wire client): the SDK has no
way to send someone else's envelope, which is the point.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from blindrelay.client import sessions
from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Backoff, Client
from blindrelay.client.transport import wire_tap
from blindrelay.protocol import frames
from blindrelay.protocol.codec import decode
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay, serve
from tests.conformance.wire import Account, open_peer

T = TypeVar("T")
TIMEOUT = 10.0


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


@asynccontextmanager
async def relay_at(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    relay = await serve(RelayConfig(host="127.0.0.1", port=0, db_path=tmp_path / "relay.db"))
    try:
        yield relay
    finally:
        await relay.close()


def make_client() -> Client:
    return Client(
        MemoryKeyStore(), backoff=Backoff(initial=0.01, factor=2.0, cap=0.05), jitter=lambda: 0.5
    )


def test_a_captured_first_message_resent_by_another_account_is_not_shown_as_his(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sessions, "TOP_UP_BELOW", 0)  # nobody publishes one-time prekeys

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            carol = make_client()
            await within(carol.connect(relay.url))
            await within(carol.register("carol"))
            messages = carol.messages()

            on_the_wire: list[bytes] = []
            token = wire_tap.set(
                lambda way, data: on_the_wire.append(data) if way == "out" else None
            )
            try:
                alice = make_client()
                await within(alice.connect(relay.url))
            finally:
                wire_tap.reset(token)
            await within(alice.register("alice"))
            await within(alice.send("carol", "for carol, from alice"))
            first = await within(anext(messages))
            assert (first.sender, first.body) == ("alice", "for carol, from alice")
            [captured] = [f for f in map(decode, on_the_wire) if isinstance(f, frames.Send)]

            mallory = await open_peer(relay.url)
            await mallory.register(Account("mallory", "user"))
            resent = await mallory.request(
                lambda rid: frames.Send(
                    id=rid, to="carol", msg_id=captured.msg_id, intent="chat", body=captured.body
                )
            )
            assert isinstance(resent, frames.Sent)  # the relay cannot tell; carol must
            await within(alice.send("carol", "after mallory's copy"))

            with caplog.at_level(logging.WARNING, logger="blindrelay.client"):
                after = await within(anext(messages))
            assert (after.sender, after.body) == ("alice", "after mallory's copy")
            assert "dropped undecryptable message from mallory" in caplog.text
            assert carol.trust.state("mallory") is None
            assert not carol.identity_change_pending("mallory")
            alice_key = alice.sessions.identity.identity_public
            assert carol.store.identity_owner(alice_key) == "alice"

            await messages.aclose()
            await mallory.close()
            await alice.close()
            await carol.close()

    run(scenario())
