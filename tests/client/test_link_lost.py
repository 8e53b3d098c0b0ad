"""A relay that ends the connection under a request (client/link.py, T56).

T55 bounded a request left unanswered on an open connection; these are the requests a
relay answers by closing the connection — a "poison" request, which the client sent
again on every new connection for ever. Over the in-memory relay of :mod:`.fake_relay`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.link import MAX_UNANSWERED
from blindrelay.client.sdk import Client, NoAnswer
from blindrelay.protocol import frames

from .fake_relay import URL, FakeRelay, RelayEnd, answer_plainly, answer_sent
from .harness import online, session_with, within

QUICK = 0.2
"""The answer timeout these tests give the client (``ANSWER_TIMEOUT_S`` is 60 s)."""


def dropping(
    kind: type[frames.Frame], times: int | None = None
) -> Callable[[RelayEnd, frames.Frame], None]:
    """A relay that ends the connection on receiving a ``kind``, before any answer — the
    first ``times`` ones, or every one — and answers the rest plainly."""
    dropped = 0

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        nonlocal dropped
        if isinstance(frame, kind) and (times is None or dropped < times):
            dropped += 1
            end.drop()
        elif isinstance(frame, frames.StatementsList):
            end.send(frames.Statements(re=frame.id, statements=[]))
        else:
            answer_plainly(end, frame)

    return answer


def asked(relay: FakeRelay, kind: type[frames.Frame]) -> list[int]:
    """How many ``kind`` each connection received."""
    return [len(end.received(kind)) for end in relay.ends]


async def test_a_request_the_relay_closes_the_connection_on_raises_no_answer() -> None:
    """T56: a relay that closes the connection whenever a request arrives (here
    STATEMENTS_LIST) had ``statements()`` ask again on every new connection for ever: a
    drop was always taken for the network's. After ``MAX_UNANSWERED`` connections ended
    under it the call raises NoAnswer, as for a request left unanswered; the client stays
    online for the rest."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open)
    relay.answer = dropping(frames.StatementsList)
    with pytest.raises(NoAnswer):
        await within(alice.statements(), 5)
    assert sum(asked(relay, frames.StatementsList)) == MAX_UNANSWERED
    assert max(asked(relay, frames.StatementsList)) == 1
    await within(alice.grant("airline", ["utility"]))  # the other requests are served
    await alice.close()


async def test_a_relay_that_restarts_under_a_request_is_not_cut_off() -> None:
    """The honest case: a relay that restarts under a request once or twice (each drop
    ends the connection before the answer) still has it answered on the next one."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open)
    relay.answer = dropping(frames.StatementsList, times=MAX_UNANSWERED - 1)
    assert await within(alice.statements(), 5) == []
    assert asked(relay, frames.StatementsList) == [1] * MAX_UNANSWERED
    await alice.close()


async def test_drops_and_silences_count_together() -> None:
    """A relay alternating the two — one connection closed under the request, the next
    left open with it unanswered — is bounded by the same count: NoAnswer after
    ``MAX_UNANSWERED`` connections in all, not that many of each (or of either, for ever)."""
    relay = FakeRelay()
    alice = await online(URL, "alice", open_transport=relay.open, answer_timeout_s=QUICK)

    def alternating(end: RelayEnd, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.StatementsList):
            answer_plainly(end, frame)
        elif sum(asked(relay, frames.StatementsList)) % 2 == 1:
            end.drop()  # the 1st, 3rd, … ; the others are never answered

    relay.answer = alternating
    with pytest.raises(NoAnswer):
        await within(alice.statements(), 5)
    assert sum(asked(relay, frames.StatementsList)) == MAX_UNANSWERED
    await alice.close()


class Waits:
    """A backoff that records the attempt number of each wait and waits for none."""

    stable_s = 10.0

    def __init__(self) -> None:
        self.attempts: list[int] = []

    def delay(self, attempt: int, jitter: object) -> float:
        self.attempts.append(attempt)
        return 0.0


async def test_a_send_the_relay_closes_the_connection_on_waits_with_a_growing_backoff() -> None:
    """T56, a queued send: the envelope goes again on every connection (a second ``send``
    would be a second message, T55), so the call waits. But each connection the relay
    closes at that SEND had been online, which started the backoff again: the client
    reconnected, logged in and sent it at the first wait (0.25–0.5 s) for ever. A
    connection that ends with a request asked again still unanswered does not start
    the backoff again; once the relay takes the SEND, it is answered once."""
    relay = FakeRelay()
    waits = Waits()
    alice = Client(
        MemoryKeyStore(), backoff=waits, jitter=lambda: 0.5,  # type: ignore[arg-type]
        open_transport=relay.open,
    )  # fmt: skip
    await within(alice.connect(URL))
    await within(alice.register("alice"))
    session_with(alice, "bob", b"\x55" * 32)
    drops = 5

    def drop_the_send(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Send) and sum(asked(relay, frames.Send)) <= drops:
            end.drop()
        elif isinstance(frame, frames.Send):
            answer_sent(end, frame)
        else:
            answer_plainly(end, frame)

    relay.answer = drop_the_send
    msg_id = await within(alice.send("bob", "hello"), 5)
    sends = [send.msg_id for end in relay.ends for send in end.received(frames.Send)]
    assert sends == [msg_id] * (drops + 1)
    # The first drop may be the network's: the backoff starts again after it; the
    # same SEND lost again is not.
    assert waits.attempts == list(range(drops))
    await alice.close()
