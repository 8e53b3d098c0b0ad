"""Transport and error handling over real sockets (SPEC §1, §2.2, §9)."""

from __future__ import annotations

import os

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode

from blindrelay.protocol import limits
from blindrelay.protocol.codec import encode
from blindrelay.protocol.errors import ErrorCode
from blindrelay.protocol.frames import BundleFetch, Deliver, Error, FrameType, Hello, Ok, Send, Sent
from blindrelay.server import dispatch
from blindrelay.server.config import RelayConfig
from blindrelay.server.relay import RunningRelay, _head, serve

from .conftest import Clients, FakeClock, db_rows, error_code


async def test_a_handshake_without_the_subprotocol_is_refused_with_400(
    relay: RunningRelay,
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(relay.url, compression=None)
    assert refused.value.response.status_code == 400
    with pytest.raises(InvalidStatus):
        await connect(relay.url, subprotocols=["blindrelay.v2"], compression=None)  # type: ignore[list-item]


async def test_hello_carries_the_relay_key_and_a_fresh_challenge(
    relay: RunningRelay, clients: Clients, clock: FakeClock
) -> None:
    first, second = await clients.open(relay.url), await clients.open(relay.url)
    assert isinstance(first.conn.hello, Hello) and isinstance(second.conn.hello, Hello)
    assert first.relay_key == second.relay_key == relay.relay_key
    assert first.conn.hello.challenge != second.conn.hello.challenge
    assert first.conn.hello.now == clock.now
    assert first.conn.hello.expires_at == clock.now + limits.CHALLENGE_TTL_MS


async def test_the_relay_key_survives_a_restart(config: RelayConfig, clock: FakeClock) -> None:
    first = await serve(config, clock=clock)
    await first.close()
    second = await serve(config, clock=clock)
    await second.close()
    assert first.relay_key == second.relay_key


async def test_a_text_message_is_malformed_and_the_connection_survives(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    await alice.ws.send("hello")
    frame = await alice.recv()
    assert error_code(frame) == ErrorCode.MALFORMED_FRAME and frame.re is None  # type: ignore[union-attr]
    assert isinstance(await alice.upload_prekeys(), Ok)


async def test_an_oversized_message_closes_1009_and_others_are_unaffected(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    await alice.ws.send(b"\x00" * (limits.MAX_FRAME_BYTES + 1))
    assert await alice.closed() == 1009
    assert isinstance(await bob.send_message("bob", b"still here"), Sent)


async def test_malformed_frames_get_their_code_and_the_connection_survives(
    relay: RunningRelay, clients: Clients
) -> None:
    alice = await clients.registered(relay.url, "alice")
    cases = [
        (b"\xc1", ErrorCode.MALFORMED_FRAME),  # never-used msgpack byte
        (encode(Ok(re=1))[:-1] + b"\x00", ErrorCode.MALFORMED_FRAME),
        (b"\x81\xa1t\xcd\x03\xe7", ErrorCode.UNKNOWN_FRAME_TYPE),  # {"t": 999}
        (encode(Ok(re=7)), ErrorCode.UNEXPECTED_FRAME),  # relay-only frame
    ]
    for data, code in cases:
        await alice.ws.send(data)
        assert error_code(await alice.recv()) == code
    # A refused request still gets its id echoed when the id itself was readable.
    bad = encode(BundleFetch(id=42, handle="bob")).replace(b"bob", b"B!b")
    await alice.ws.send(bad)
    refusal = await alice.recv()
    assert isinstance(refusal, Error) and refusal.re == 42 and refusal.reason
    assert isinstance(await alice.upload_prekeys(), Ok)


async def test_too_many_errors_close_the_connection(relay: RunningRelay, clients: Clients) -> None:
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    for _ in range(limits.MAX_PROTOCOL_ERRORS + 1):
        await alice.ws.send(b"\xc1")
    codes = [error_code(await alice.recv()) for _ in range(limits.MAX_PROTOCOL_ERRORS + 1)]
    assert codes[-1] == ErrorCode.TOO_MANY_ERRORS
    assert set(codes[:-1]) == {ErrorCode.MALFORMED_FRAME}
    assert await alice.closed() == 1008
    assert isinstance(await bob.send_message("bob", b"unaffected"), Sent)


async def test_an_internal_error_is_sent_bare_and_the_connection_survives(
    relay: RunningRelay, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setitem(dispatch.HANDLERS, FrameType.BUNDLE_FETCH, broken)
    alice = await clients.registered(relay.url, "alice")
    frame = await alice.request(lambda i: BundleFetch(id=i, handle="alice"))
    assert isinstance(frame, Error)
    assert (frame.code, frame.reason, frame.retry_after) == (ErrorCode.INTERNAL_ERROR, None, None)
    assert isinstance(await alice.upload_prekeys(), Ok)


async def test_shutdown_finishes_commits_then_says_shutting_down(
    config: RelayConfig, clock: FakeClock, clients: Clients
) -> None:
    running = await serve(config, clock=clock)
    alice = await clients.registered(running.url, "alice")
    await clients.registered(running.url, "bob")
    await alice.send(Send(id=77, to="bob", msg_id=b"m" * 16, intent="chat", body=b"in flight"))
    await running.close()  # the SEND may or may not have been read by now
    code = await alice.closed()
    frames = list(alice.inbox)
    assert code == 1001
    assert isinstance(frames[-1], Error) and frames[-1].code == ErrorCode.SHUTTING_DOWN
    got_sent = any(isinstance(f, Sent) and f.re == 77 for f in frames)
    stored = db_rows(config.db_path, "SELECT COUNT(*) FROM queue WHERE msg_id = ?", (b"m" * 16,))
    # Whichever way the race went: SENT was sent exactly when the envelope is stored.
    assert stored == [(1 if got_sent else 0,)]


async def test_messages_keep_their_order_across_the_switch_to_websockets_assembler(
    relay: RunningRelay, clients: Clients
) -> None:
    """Binary messages are dispatched inside data_received; a text message sends
    this connection's later messages through websockets' assembler. Per-pair order
    (SPEC §6.4) holds across the switch."""
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    assert relay._server is not None
    assert all(ws.on_message is not None for ws in relay._server.connections)  # type: ignore[attr-defined]
    bodies = [b"first", b"second", b"third"]
    for index, body in enumerate(bodies):
        if index == 1:
            await alice.ws.send("not a frame")
        await alice.send(Send(id=100 + index, to="bob", msg_id=bytes([index]) * 16,
                              intent="chat", body=body))  # fmt: skip
    received = [await bob.push(Deliver) for _ in bodies]
    assert [d.body for d in received] == bodies
    assert [d.delivery_id for d in received] == sorted(d.delivery_id for d in received)
    assert error_code(await alice.push(Error)) == ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frames_are_headed_as_websockets_would_head_them(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert _head(data) + data == WsFrame(Opcode.BINARY, data).serialize(mask=False)


async def test_a_deliver_of_the_largest_body_arrives_whole(
    relay: RunningRelay, clients: Clients
) -> None:
    """Frames over 125 bytes take the 16-bit length form of the frame head."""
    alice = await clients.registered(relay.url, "alice")
    bob = await clients.registered(relay.url, "bob")
    body = os.urandom(limits.MAX_CIPHERTEXT_BYTES)
    assert isinstance(await alice.send_message("bob", body), Sent)
    assert (await bob.push(Deliver)).body == body
