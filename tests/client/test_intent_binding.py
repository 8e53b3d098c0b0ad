"""A message's intent and categories are bound end to end, through a real relay (SPEC
§13.11 rule 4, threat model T45).

The attack: the intent (chat, notification, consent request) and the category or
categories travel in the SEND/DELIVER metadata, outside the encryption, and the
relay could rewrite them. A business's service reply arrived as that business's
consent request for marketing (the chat offered ``/grant airline marketing`` under
its name), a utility notification as a marketing one. The relay is simulated by a
transport that rewrites the first DELIVER from the business as the client reads it,
inside the channel — exactly what the relay controls. Content version 2 repeats the
SEND's labels inside the ciphertext; the recipient refuses content whose labels
differ from the DELIVER's, logs the mismatch and shows nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from blindrelay.client.business import Business
from blindrelay.client.sdk import Client
from blindrelay.client.transport import OpenTransport, WebSocketTransport
from blindrelay.protocol import frames
from blindrelay.protocol.codec import decode, encode

from ..relays import relay_at
from .harness import business_online, consented, make_client, run, within

SECRET = "BA123 leaves from gate C1"
"""The relabelled message's text: it must never reach the log."""


def relabelling(sender: str, **labels: object) -> OpenTransport:
    """Connections on which the first DELIVER from ``sender`` carries ``labels`` instead
    of its own intent, category and categories (the relay's power, simulated)."""
    done = False

    class Relabelling(WebSocketTransport):
        async def recv(self) -> bytes:
            nonlocal done
            data = await super().recv()
            frame = decode(data)
            if isinstance(frame, frames.Deliver) and frame.sender == sender and not done:
                done = True
                fields = {"category": None, "categories": None, **labels}
                return encode(dataclasses.replace(frame, **fields))  # type: ignore[arg-type]
            return data

    return Relabelling.open


Send = Callable[[Business, Client], Awaitable[object]]


async def _reply(airline: Business, dave: Client) -> None:
    await airline.reply("dave", SECRET)


async def _notify(airline: Business, dave: Client) -> None:
    await within(dave.grant("airline", ["utility"]))
    await consented(airline, ["dave"])
    result = await airline.notify("utility", SECRET, to=["dave"])  # the bulk path
    assert result.sent == ["dave"]


async def _ask(airline: Business, dave: Client) -> None:
    await airline.request_consent("dave", ["utility"], SECRET)


CASES: dict[str, tuple[Send, dict[str, object]]] = {
    "service reply shown as a marketing consent request": (
        _reply, {"intent": "consent_request", "categories": ("marketing",)},
    ),
    "service reply shown as a notification": (
        _reply, {"intent": "notification", "category": "utility"},
    ),
    "utility notification shown as marketing": (
        _notify, {"intent": "notification", "category": "marketing"},
    ),
    "consent request for utility shown as one for marketing too": (
        _ask, {"intent": "consent_request", "categories": ("utility", "marketing")},
    ),
    "consent request shown as a service reply": (_ask, {"intent": "chat"}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_message_the_relay_relabelled_is_refused_and_the_next_one_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    send, labels = CASES[case]

    async def scenario() -> None:
        async with relay_at(tmp_path) as relay:
            airline = await business_online(relay.url, "airline")
            dave = make_client(open_transport=relabelling("airline", **labels))
            await within(dave.connect(relay.url))
            await within(dave.register("dave"))
            messages = dave.messages()
            await within(dave.send("airline", "is my flight on time?"))  # opens the window

            with caplog.at_level(logging.WARNING, logger="blindrelay.client"):
                await within(send(airline, dave))
                await within(airline.reply("dave", "after the relabelled one"))
                shown = await within(anext(messages))
            assert (shown.sender, shown.intent, shown.body) == (
                "airline", "chat", "after the relabelled one",
            )  # fmt: skip
            assert "content labels differ from the frame's" in caplog.text
            assert "from airline" in caplog.text
            assert SECRET not in caplog.text

            await messages.aclose()
            await dave.close()
            await airline.close()

    run(scenario())
