"""Logs name frames, sizes, handles and outcomes, never content (SPEC §11)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from blindrelay.protocol.frames import Ack, Deliver, Ok, ProfileFetch, Sent
from blindrelay.server.logs import (
    REFUSAL_LOG_BURST,
    configure_logging,
    log_event,
    remove_handler,
)
from blindrelay.server.relay import RunningRelay

from .conftest import Clients, error_code

CANARY = b"CANARY-" + os.urandom(16).hex().encode() + b"-CANARY"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("DEBUG", stream)
    yield stream
    remove_handler(handler)


def _forms(secret: bytes) -> list[str]:
    return [
        secret.decode("latin-1"),
        secret.hex(),
        secret[:20].hex(),
        base64.b64encode(secret).decode(),
        repr(secret)[2:-1],
    ]


async def test_canary_bytes_never_reach_the_log(
    relay: RunningRelay, clients: Clients, log_output: io.StringIO
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    msg_id = os.urandom(16)
    assert isinstance(await alice.send_message("bob", CANARY, msg_id=msg_id), Sent)
    refused = await alice.send_message("bob", CANARY + b"!", msg_id=msg_id)
    delivered = await bob.push(Deliver)
    await bob.send(Ack(delivery_ids=(delivered.delivery_id,)))
    assert isinstance(await bob.upload_prekeys(one_time=1), Ok)
    await alice.ws.send(CANARY)  # not msgpack: refused, and its bytes not logged either
    await alice.recv()
    assert error_code(refused) == 403
    text = log_output.getvalue()
    for form in _forms(CANARY) + _forms(msg_id) + _forms(bob.key.encode()):
        assert form not in text
    events = [json.loads(line) for line in text.splitlines()]
    sends = [e for e in events if e["event"] == "frame" and e["type"] == "SEND"]
    assert len(sends) == 2 and all(e["handle"] == "alice" for e in sends)
    assert any(e["event"] == "refused" and e["error"] == "MESSAGE_ID_REUSED" for e in events)
    assert any(e["event"] == "sent" and e["size"] == len(CANARY) for e in events)


def test_bytes_given_to_log_event_are_logged_as_their_length(log_output: io.StringIO) -> None:
    log_event(logging.INFO, "probe", body=CANARY, handle="alice", count=3, other=object())
    line = json.loads(log_output.getvalue())
    assert line["body"] == f"<{len(CANARY)} bytes>"
    assert (line["handle"], line["count"], line["other"]) == ("alice", 3, "object")


async def test_a_flood_of_refusals_costs_a_bounded_number_of_log_lines(
    relay: RunningRelay, clients: Clients, log_output: io.StringIO
) -> None:
    """A refusal is one INFO line, so a client that sends nothing but refused requests
    (402s here; malformed frames alike) would write the operator's disk as fast as it
    can send. Per connection, refusals are logged up to a burst and then counted; the
    count is logged when logging resumes or the connection ends."""
    mallory = await clients.registered(relay.url, "mallory")
    flood = 300
    for _ in range(flood):
        await mallory.send(ProfileFetch(id=mallory.request_id(), handle="nobody"))
    answers = [await mallory.recv() for _ in range(flood)]
    assert sum(error_code(a) == 402 for a in answers) > 200
    await mallory.close()
    await _until_logged(log_output, "disconnected")
    events = [json.loads(line) for line in log_output.getvalue().splitlines()]
    refused = [e for e in events if e["event"] == "refused"]
    assert len(refused) <= REFUSAL_LOG_BURST + 1
    suppressed = sum(e.get("refusals_suppressed", 0) for e in events)
    assert len(refused) + suppressed == flood


async def _until_logged(log_output: io.StringIO, event: str) -> None:
    for _ in range(200):
        if f'"event":"{event}"' in log_output.getvalue():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {event} line")
