"""An application callback that raises while a DELIVER is handled is logged, and the
delivery is acknowledged and the inbox flows on (T68).

The SDK calls ``on_identity_change``, statement listeners (``on_statement``, a business's
``on_consent_change``/``on_block``) and ``on_log_unchecked`` while it handles a DELIVER,
before its ACK. What they raised went through: the client stopped for good ("client
stopped after an error"), nothing more was acknowledged, and at the next run the relay
delivered the same envelope first again. For a key change it was held once more, the
callback heard of it once more (once per run) and raised once more: any account could
stop a client's whole inbox, run after run, by naming a new key once — whenever the
application's callback fails for it (a stranger missing from its address book, a full
bounded queue).
"""

from __future__ import annotations

import logging

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import HeldMessages
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.signed import ConsentStatement

from ..relays import T0
from .fake_relay import URL, FakeRelay
from .harness import Inbox, online, run
from .key_changes import Pusher, account, bundle_of, forwarded_statement

CAROL = IdentityKeyPair.from_seed(b"\xca" * 32)


def test_an_identity_change_callback_that_raises_stops_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address_book: dict[str, str] = {"carol": "Carol"}
    notices: list[str] = []

    def changed(handle: str) -> None:
        notices.append(f"{address_book[handle]} has a new key")  # a stranger: KeyError

    async def scenario() -> None:
        relay = FakeRelay()
        bob = await online(
            URL, "bob", store=MemoryKeyStore(), open_transport=relay.open,
            on_identity_change=changed,
        )  # fmt: skip
        inbox = Inbox(bob)
        wire = Pusher(relay.ends[-1])
        bundle = bundle_of(bob)
        await wire.message(account("mallory", bundle), "bob", "hi")
        await wire.message(account("mallory", bundle), "bob", "new key")  # before: no ACK
        assert bob.held_messages("mallory") == HeldMessages(1, 0)
        await wire.message(account("carol", bundle), "bob", "still flowing")
        assert [(await inbox.next()).body for _ in range(2)] == ["hi", "still flowing"]
        await inbox.close()
        await bob.close()

    with caplog.at_level(logging.ERROR, logger="blindrelay.client"):
        run(scenario())
    assert "callback" in caplog.text and "KeyError" in caplog.text


def test_a_statement_listener_that_raises_stops_nothing() -> None:
    heard: list[ConsentStatement] = []

    def listener(kept: ConsentStatement) -> None:
        heard.append(kept)
        raise RuntimeError("the application's database is down")

    async def scenario() -> None:
        relay = FakeRelay()
        shop = await online(
            URL, "shop", "business", store=MemoryKeyStore(), open_transport=relay.open,
            on_statement=listener,
        )  # fmt: skip
        wire = Pusher(relay.ends[-1])
        grant = forwarded_statement("grant", "carol", CAROL, "shop", T0)
        await wire.push(grant)  # before: no ACK, the client stopped
        revoke = forwarded_statement("revoke", "carol", CAROL, "shop", T0 + 60_000)
        await wire.push(revoke)
        assert [kept.action for kept in heard] == ["grant", "revoke"]
        assert shop.consent.records("carol") == [grant.body, revoke.body]
        await shop.close()

    run(scenario())
