"""A message the content decoder cannot handle is refused, not a poison for the inbox;
a forwarded statement its parser cannot handle is dropped, not the end of the client.

T77 found one such message (a bin map key beside an unknown str key: ``TypeError``
from ``decode_content``) and fixed the decoder. What made it dangerous was the
client's side: only ``MalformedContent`` was a refusal, so any other exception ended the
connection's read loop with the DELIVER unacknowledged — the relay delivers it again
on every connection, and nothing after it is ever read. Another decoder bug on the
same peer-chosen bytes must cost one message, not the inbox: the decoder is stood in
for by one that fails on a marker, as a bug would, through a real relay.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest

from blindrelay.client import incoming as incoming_module
from blindrelay.client import statements as statements_module
from blindrelay.protocol.content import Content

from ..relays import relay_at
from .harness import Inbox, back_online, business_online, consented, online, run, within

POISON = "POISON the decoder"


def test_content_that_breaks_the_decoder_is_refused_and_the_inbox_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = incoming_module.decode_content

    def buggy(data: bytes, **options: object) -> Content:
        if POISON.encode() in data:
            raise TypeError("'<' not supported between instances of 'bytes' and 'str'")
        return real(data, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(incoming_module, "decode_content", buggy)

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            await within(bob.send("alice", "hi alice"))
            inbox = Inbox(alice)
            assert (await inbox.next()).body == "hi alice"
            await within(alice.send("bob", "hi bob"))  # contacts: chats both ways
            with caplog.at_level(logging.WARNING, logger="blindrelay.client"):
                await within(bob.send("alice", POISON))
                await within(bob.send("alice", "after the poison"))
                shown = await inbox.next()
            assert shown.body == "after the poison"
            assert "TypeError" in caplog.text and "from bob" in caplog.text
            assert POISON not in caplog.text  # the log shows no content
            await inbox.close()
            store = alice.store
            await alice.close()
            # Refused and acknowledged: not delivered again on the next connection.
            alice = await back_online(relay.url, store)
            inbox = Inbox(alice)
            await within(bob.send("alice", "next connection"))
            assert (await inbox.next()).body == "next connection"
            await inbox.close()
            await alice.close()
            await bob.close()

    run(scenario())


def test_a_statement_that_breaks_its_parser_is_dropped_and_the_client_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for a consent statement the relay forwards (SPEC §7.5): the signer chose
    its bytes, and only a ProtocolError was a refusal, so a parser bug on them stopped
    the business's client (T83). The parser stands in for such a bug
    on the business reading alice's first grant, forwarded; her next grant is taken."""
    real = statements_module.unverified_body
    calls = []

    def buggy(kind: type, signed: bytes) -> object:
        caller = inspect.currentframe()
        assert caller is not None and caller.f_back is not None
        if caller.f_back.f_code.co_name == "receive":  # a forwarded one, not our own
            calls.append(signed)
            if len(calls) == 1:
                raise KeyError("a bug")
        return real(kind, signed)  # type: ignore[type-var]

    monkeypatch.setattr(statements_module, "unverified_body", buggy)

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            shop = await business_online(relay.url, "shop")
            alice = await online(relay.url, "alice")
            with caplog.at_level(logging.WARNING, logger="blindrelay.client"):
                await within(alice.grant("shop", ("utility",)))
                await within(alice.grant("shop", ("marketing",)))
                await consented(shop, ["alice"], "marketing")
            assert calls and "KeyError" in caplog.text and "from alice" in caplog.text
            await alice.close()
            await shop.close()

    run(scenario())
