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

import logging
from pathlib import Path

import pytest

from blindrelay.client import sessions
from blindrelay.client.transport import tapped
from blindrelay.protocol import frames
from blindrelay.protocol.codec import decode
from tests.conformance.wire import Account, open_peer

from ..relays import relay_at
from .harness import make_client, run, within


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
            alice = make_client(
                open_transport=tapped(
                    lambda way, data: on_the_wire.append(data) if way == "out" else None
                )
            )
            await within(alice.connect(relay.url))
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
