"""One connection to the relay (client/connection.py): requests matched to their answers
by id, a relay ERROR raised as its named exception (SPEC §9), what the relay sends
unasked handed to the account, the connection's end failing every waiting request.

Unit tests drive a :class:`Connection` over the in-memory relay of :mod:`.fake_relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from blindrelay.client.connection import Connection, FrameHandlers
from blindrelay.client.transport import ConnectionLost
from blindrelay.protocol import frames
from blindrelay.protocol.errors import (
    HandleTaken,
    NotFound,
    ProtocolError,
    RateLimited,
    RecipientUnavailable,
)
from blindrelay.protocol.fastcodec import encode_send

from ..relays import T0, FakeClock, relay_at
from .fake_relay import URL, FakeRelay, RelayEnd, answer_plainly, signer
from .harness import (
    make_client,
    online,
    run,
    within,
)

KEY = SigningKey(b"\x33" * 32)
OURS = FakeClock(T0 - 5_000)
"""Our clock, five seconds behind the relay's."""


class Reported:
    """The frame handlers of a connection: record what they are handed."""

    def __init__(self) -> None:
        self.delivered: list[frames.Deliver] = []
        self.low: list[int] = []
        self.answered: list[tuple[bytes, int | None, ProtocolError | None]] = []

    def handlers(self) -> FrameHandlers:
        return FrameHandlers(
            deliver_received=lambda conn, deliver: self.delivered.append(deliver),
            prekeys_low=lambda conn, remaining: self.low.append(remaining),
            send_answered=lambda msg_id, at, error: self.answered.append((msg_id, at, error)),
        )


def holding(end: RelayEnd, frame: frames.Frame) -> None:
    """Answer the login, and nothing else: the test answers the rest itself."""
    if isinstance(frame, frames.Register):
        answer_plainly(end, frame)


class Wired:
    """A :class:`Connection` online as ``alice`` over the in-memory relay, read by a task."""

    def __init__(self, relay: FakeRelay, end: RelayEnd, conn: Connection, reported: Reported):
        self.relay, self.end, self.conn, self.reported = relay, end, conn, reported
        self.reader = asyncio.create_task(conn.read())

    @classmethod
    async def online(cls) -> Wired:
        relay = FakeRelay()
        relay.answer = holding
        transport = await relay.open(URL)
        reported = Reported()
        conn = Connection(transport, reported.handlers(), clock=OURS)  # type: ignore[arg-type]
        wired = cls(relay, relay.ends[0], conn, reported)
        conn = wired.conn
        await within(conn.hello)
        request_id = conn.machine.register("alice", "user", KEY.verify_key.encode(), signer(KEY))
        assert isinstance(await within(conn.answer_to(request_id)), frames.Welcome)
        assert conn.authenticated
        return wired

    async def ended(self) -> BaseException:
        """Why the reader stopped."""
        with pytest.raises(BaseException) as stopped:
            await within(self.reader)
        return stopped.value

    async def close(self) -> None:
        self.conn.fail(ConnectionLost("test over"))
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionLost):
            await self.reader


def fetch(conn: Connection, handle: str) -> asyncio.Future[frames.Frame]:
    return conn.request(frames.ProfileFetch(id=conn.next_request_id(), handle=handle))


def profile(re: int, handle: str) -> frames.Profile:
    return frames.Profile(re=re, handle=handle, identity_key=b"\x44" * 32)


async def test_the_clock_offset_is_the_relay_s_clock_minus_ours_at_hello() -> None:
    wired = await Wired.online()
    assert wired.conn.clock_offset == 5_000
    assert wired.conn.relay_key == wired.relay.key.verify_key.encode()
    await wired.close()


async def test_answers_reach_their_requests_by_id_in_any_order() -> None:
    wired = await Wired.online()
    bob, carol = fetch(wired.conn, "bob"), fetch(wired.conn, "carol")
    await wired.conn.drain()  # both written before the relay answers
    asked = await wired.end.wait_for(frames.ProfileFetch, 2)
    assert [f.handle for f in asked] == ["bob", "carol"]
    wired.end.send(profile(asked[1].id, "carol"), profile(asked[0].id, "bob"))
    assert (await within(bob)).handle == "bob"  # type: ignore[attr-defined]
    assert (await within(carol)).handle == "carol"  # type: ignore[attr-defined]
    await wired.close()


async def test_an_error_answering_a_request_raises_its_named_exception_alone() -> None:
    wired = await Wired.online()
    bob, carol = fetch(wired.conn, "bob"), fetch(wired.conn, "carol")
    asked = await wired.end.wait_for(frames.ProfileFetch, 2)
    wired.end.refuse(RateLimited(retry_after_ms=1_500), re=asked[0].id)
    with pytest.raises(RateLimited) as limited:
        await within(bob)
    assert limited.value.retry_after_ms == 1_500
    assert not carol.done()  # the other request still waits for its answer
    wired.end.refuse(NotFound(), re=asked[1].id)
    with pytest.raises(NotFound):
        await within(carol)
    await wired.close()


async def test_the_answer_to_a_send_goes_to_its_msg_id_never_to_a_request() -> None:
    wired = await Wired.online()
    conn, reported = wired.conn, wired.reported
    for n, to in enumerate(("bob", "nobody", "carol"), start=1):
        request_id = conn.next_request_id()
        data = encode_send(request_id, to, bytes([n]) * 16, "chat", b"envelope")
        conn.send_message(bytes([n]) * 16, request_id, data)
    sends = await wired.end.wait_for(frames.Send, 3)
    wired.end.send(frames.Sent(re=sends[0].id, msg_id=sends[0].msg_id, at=T0 + 1))
    wired.end.refuse(RecipientUnavailable(), re=sends[1].id)
    # A relay bug or lie: a SEND answered with OK (SPEC §2.2: SENT or ERROR only). It
    # is the relay's fault, so the connection ends and the SEND stays unanswered, to go
    # again with its msg_id on the next (before, the message failed for good).
    wired.end.send(frames.Ok(re=sends[2].id))
    ended = await wired.ended()
    assert isinstance(ended, ConnectionLost) and "SEND answered with OK" in str(ended)
    (one, at, none), (two, no_at, unavailable) = reported.answered
    assert (one, at, none) == (b"\x01" * 16, T0 + 1, None)
    assert two == b"\x02" * 16 and no_at is None and isinstance(unavailable, RecipientUnavailable)
    assert conn.machine.pending == {sends[2].id: frames.FrameType.SEND}
    await wired.close()


async def test_a_sent_naming_another_msg_id_ends_the_connection_and_answers_nothing() -> None:
    """T69: a SENT is its SEND's answer only with that SEND's msg_id (SPEC §6.3). A relay
    that answers one message's SEND with another's SENT (a mix-up, or a lie about which
    message it holds) is at fault: the connection ends and the SEND goes again on the
    next, as for any answer of the wrong type (§2.2). Before, the message was taken as
    accepted whatever msg_id the SENT named."""
    wired = await Wired.online()
    conn, reported = wired.conn, wired.reported
    for n in (1, 2):
        request_id = conn.next_request_id()
        conn.send_message(bytes([n]) * 16, request_id, encode_send(
            request_id, "bob", bytes([n]) * 16, "chat", b"envelope"
        ))  # fmt: skip
    sends = await wired.end.wait_for(frames.Send, 2)
    wired.end.send(frames.Sent(re=sends[0].id, msg_id=sends[0].msg_id, at=T0 + 1))
    wired.end.send(frames.Sent(re=sends[1].id, msg_id=sends[0].msg_id, at=T0 + 2))
    ended = await wired.ended()
    assert isinstance(ended, ConnectionLost) and "another message" in str(ended)
    assert reported.answered == [(b"\x01" * 16, T0 + 1, None)]
    await wired.close()


async def test_what_the_relay_sends_unasked_goes_to_the_account(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wired = await Wired.online()
    deliver = frames.Deliver(
        delivery_id=7, sender="bob", sender_kind="user", msg_id=b"m" * 16, intent="chat",
        sent_at=T0, body=b"envelope",
    )  # fmt: skip
    wired.end.send(deliver, frames.PrekeysLow(remaining=3), frames.Error(code=900))
    bob = fetch(wired.conn, "bob")  # the connection goes on after the unasked ERROR
    (asked,) = await wired.end.wait_for(frames.ProfileFetch)
    wired.end.send(profile(asked.id, "bob"))
    await within(bob)
    assert wired.reported.delivered == [deliver] and wired.reported.low == [3]
    assert "relay error 900" in caplog.text  # logged, and nothing waiting failed
    assert not wired.reader.done()
    await wired.close()


async def test_an_answer_to_no_request_ends_the_connection() -> None:
    wired = await Wired.online()
    wired.end.send(frames.Ok(re=999))
    stopped = await wired.ended()
    assert isinstance(stopped, ConnectionLost) and "invalid frame" in str(stopped)
    await wired.close()


async def test_bytes_that_are_no_frame_end_the_connection() -> None:
    wired = await Wired.online()
    wired.end.transport.deliver(b"\xc1")
    assert isinstance(await wired.ended(), ConnectionLost)
    await wired.close()


async def test_the_end_of_a_connection_fails_every_request_waiting_on_it() -> None:
    wired = await Wired.online()
    bob, carol = fetch(wired.conn, "bob"), fetch(wired.conn, "carol")
    wired.conn.fail(ConnectionLost("gone"))
    for waiting in (bob, carol):
        with pytest.raises(ConnectionLost, match="gone"):
            await within(waiting)
    assert wired.conn.lost
    await wired.close()


# --- Against a real relay ---------------------------------------------------------------


def test_relay_errors_raise_their_named_exceptions(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_at(tmp_path, bundle_burst=2, bundle_rate_per_min=1.0) as relay:
            alice = await online(relay.url, "alice")
            bob = await online(relay.url, "bob")
            carol = await online(relay.url, "carol")

            with pytest.raises(RecipientUnavailable):
                await within(alice.send("nobody", "hello?"))
            await within(alice.send("bob", "hi"))  # second bundle fetch of the burst
            with pytest.raises(RateLimited) as limited:
                await within(alice.send("carol", "hi"))
            assert limited.value.retry_after_ms > 0

            taken = make_client()
            await within(taken.connect(relay.url))
            with pytest.raises(HandleTaken):
                await within(taken.register("alice"))
            await within(taken.register("dave"))  # a fresh challenge after the refusal
            await within(taken.send("bob", "hello from dave"))
            for client in (taken, alice, bob, carol):
                await client.close()

    run(scenario())
