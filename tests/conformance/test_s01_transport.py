"""SPEC §1 Transport: WebSocket, subprotocol, the Noise channel, binary frames, no
compression, size cap."""

from __future__ import annotations

import asyncio
import contextlib
import os

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from blindrelay.protocol import SUBPROTOCOL, channel, limits
from blindrelay.protocol.codec import encode
from blindrelay.protocol.frames import BundleFetch, Deliver, Error, Send, Sent

from .wire import (
    FRAME_TIMEOUT_S,
    new_handle,
    new_msg_id,
    open_socket,
)


async def _handshake_status(url: str, subprotocols: list[str] | None) -> int:
    with pytest.raises(InvalidStatus) as refused:
        ws = await connect(
            url,
            subprotocols=subprotocols,
            compression=None,
            proxy=None,
            open_timeout=FRAME_TIMEOUT_S,
        )
        await ws.close()
    return refused.value.response.status_code


@pytest.mark.spec("1.1.2")
async def test_handshake_without_the_subprotocol_is_refused_with_400(relay):
    """SPEC: "the relay MUST refuse a handshake that does not offer it (HTTP 400, no upgrade)"."""
    assert await _handshake_status(relay.url, None) == 400


@pytest.mark.spec("1.1.2")
async def test_handshake_offering_only_another_subprotocol_is_refused_with_400(relay):
    """SPEC: "the relay MUST refuse a handshake that does not offer it (HTTP 400, no upgrade)"."""
    assert await _handshake_status(relay.url, ["blindrelay.v0", "chat"]) == 400


@pytest.mark.spec("1.1.2")
async def test_handshake_offering_the_subprotocol_selects_it(relay):
    """SPEC: "The client MUST offer the subprotocol `blindrelay.v2`" — and the relay picks it."""
    peer = await relay.connect()
    assert peer.ws.subprotocol == SUBPROTOCOL


@pytest.mark.spec("1.1.3")
async def test_a_text_message_fails_the_channel_and_closes_with_4001_unanswered(relay):
    """SPEC: "A text message [...] fails the channel: the receiver closes the connection with
    close code 4001 and answers nothing"."""
    peer = await relay.connect()
    await peer.send_wire("hello")
    assert await peer.closed() == channel.CLOSE_CHANNEL_FAILED == 4001
    assert peer.pending() == []


# --- §1.3 the channel ---------------------------------------------------------------------


async def _closed_without_a_frame(ws) -> int | None:
    """Read until the relay closes; any message before the close is a violation."""
    received = []
    try:
        while True:
            received.append(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))
    except ConnectionClosed:
        pass
    assert received == [], "the relay answered a message that failed the channel"
    return ws.close_code


@pytest.mark.spec("1.3.3")
async def test_the_relay_answers_message_1_with_192_bytes_binding_its_relay_key(relay):
    """SPEC: "message 2 is exactly 192 bytes"; its payload binds the static key to the relay
    key that HELLO then names (checked by the wire client, §1.3.2)."""
    ws = await open_socket(relay.url)
    try:
        client = channel.ClientChannel(os.urandom)
        await ws.send(client.start())
        second = await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S)
        assert isinstance(second, bytes) and len(second) == 192
        relay_key = client.receive_handshake(second)
        peer = await relay.connect()
        assert relay_key == peer.hello.relay_key
    finally:
        await ws.close()


@pytest.mark.spec("1.3.3")
@pytest.mark.parametrize("first", [b"", bytes(31), bytes(33), bytes(32)], ids=["empty", "31", "33", "low-order"])
async def test_a_malformed_first_message_closes_with_4001_unanswered(relay, first):
    """SPEC: "Message 1 is exactly 32 bytes"; any other size or a low-order key fails."""
    ws = await open_socket(relay.url)
    await ws.send(first)
    assert await _closed_without_a_frame(ws) == 4001


@pytest.mark.spec("1.3.3")
async def test_a_frame_sent_in_the_clear_instead_of_the_handshake_closes_with_4001(relay):
    """No frame is read outside the channel: an old (version 1) client's first frame fails."""
    ws = await open_socket(relay.url)
    await ws.send(encode(BundleFetch(id=1, handle="nobody")))
    assert await _closed_without_a_frame(ws) == 4001


@pytest.mark.spec("1.3.6")
@pytest.mark.parametrize("attack", ["tamper", "replay", "reorder", "forge"])
async def test_a_transport_message_that_fails_closes_with_4001_unanswered(relay, attack):
    """SPEC: tampered, replayed, reordered or forged, the relay closes with 4001 and
    answers nothing — not the message, nor any after it."""
    peer = await relay.user()
    ask = lambda i: encode(BundleFetch(id=i, handle=new_handle("nobody")))  # noqa: E731
    one, two = peer.channel.encrypt(ask(901)), peer.channel.encrypt(ask(902))
    if attack == "tamper":
        await peer.send_wire(one[:-1] + bytes([one[-1] ^ 1]))
    elif attack == "replay":
        await peer.send_wire(one, expect_re=901)
        assert isinstance(await peer.response(901), Error)  # answered: an unknown handle
        await peer.send_wire(one)
    elif attack == "reorder":
        await peer.send_wire(two)
    else:
        await peer.send_wire(os.urandom(len(one)))
    assert await _closed_without_a_frame(peer.ws) == 4001


@pytest.mark.spec("1.3.4")
async def test_the_relay_seals_every_frame_and_a_frame_of_max_size_fits(relay):
    """SPEC: "a transport message is the frame plus 16 bytes, at most 65,535"."""
    assert channel.MAX_TRANSPORT_MESSAGE_BYTES == limits.MAX_FRAME_BYTES + 16 == 65_535


@pytest.mark.spec("1.1.4")
async def test_per_message_compression_is_never_negotiated(relay):
    """SPEC: "Per-message compression MUST NOT be negotiated"."""
    ws = await connect(
        relay.url,
        subprotocols=[SUBPROTOCOL],
        compression="deflate",
        proxy=None,
        open_timeout=FRAME_TIMEOUT_S,
    )
    try:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
    finally:
        await ws.close()


@pytest.mark.spec("1.1.5")
async def test_message_over_max_frame_bytes_closes_with_1009(relay):
    """SPEC: "Either side MUST refuse a WebSocket message larger than 65,535 bytes by closing
    the connection with WebSocket close code 1009"."""
    peer = await relay.user()
    await peer.send_wire(b"\x80" + bytes(channel.MAX_TRANSPORT_MESSAGE_BYTES))
    assert await peer.closed() == 1009


@pytest.mark.spec("1.1.5")
async def test_message_of_exactly_max_frame_bytes_is_read_not_closed(relay):
    """SPEC: "This is the only oversize case that closes": a message of exactly MAX_FRAME_BYTES
    reaches the decoder, whose over-long body gets ERROR 101 naming the request."""
    peer = await relay.user()
    request_id = peer.next_id()
    fields = {
        "t": 20,
        "id": request_id,
        "to": new_handle("x"),
        "msg_id": new_msg_id(),
        "intent": "chat",
        "body": b"",
    }
    size = limits.MAX_FRAME_BYTES - len(msgpack.packb(fields)) - 3
    while True:
        fields["body"] = bytes(size)
        data = msgpack.packb(fields)
        if len(data) == limits.MAX_FRAME_BYTES:
            break
        size += limits.MAX_FRAME_BYTES - len(data)
    await peer.send_raw(data, expect_re=request_id)
    error = await peer.response(request_id)
    assert isinstance(error, Error) and error.code == 101
    assert await peer.round_trip() == []


@pytest.mark.spec("1.1.5")
async def test_an_oversize_message_leaves_other_connections_unaffected(relay):
    """Closing with 1009 concerns only the offending connection: another one keeps
    sending and receiving."""
    alice = await relay.user()
    bob = await relay.user()
    offender = await relay.user()
    await offender.send_wire(bytes(channel.MAX_TRANSPORT_MESSAGE_BYTES + 1))
    assert await offender.closed() == 1009
    sent = await alice.request(
        lambda i: Send(id=i, to=bob.handle, msg_id=new_msg_id(), intent="chat", body=b"still here")
    )
    assert isinstance(sent, Sent)
    assert (await bob.push(Deliver)).body == b"still here"


@pytest.mark.spec("1.2.1")
async def test_a_client_pinging_past_its_bucket_is_aborted_without_a_close_frame(relay):
    """SPEC: clients "MAY send their own [pings], at most MAX_CLIENT_PINGS (10) at once …
    The relay MUST abort a connection whose client pings past that — no close frame —
    before the channel's handshake as after"."""
    ws = await open_socket(relay.url)
    try:
        pongs = [await ws.ping(os.urandom(8)) for _ in range(limits.MAX_CLIENT_PINGS)]
        await asyncio.wait_for(asyncio.gather(*pongs), FRAME_TIMEOUT_S)  # all answered
        for _ in range(3):  # past the bucket, whatever refilled meanwhile
            with contextlib.suppress(ConnectionClosed):
                await ws.ping()
        await asyncio.wait_for(ws.wait_closed(), FRAME_TIMEOUT_S)
        assert ws.close_code == 1006, ws.close_code  # aborted: no close frame came
    finally:
        await ws.close()


@pytest.mark.spec("1.2.3")
async def test_a_new_login_closes_the_previous_connection_with_4000_replaced(relay):
    """SPEC: "When an account authenticates on a new connection the relay MUST close the
    previous one with close code 4000 (reason `replaced`)"."""
    first = await relay.user()
    await relay.login(first)
    assert await first.closed() == 4000
    assert first.close_reason == "replaced"


@pytest.mark.spec("1.2.3")
async def test_deliveries_in_flight_on_a_replaced_connection_come_again(relay):
    """SPEC: "Deliveries in flight on the old connection are not lost: … they are delivered
    again on the new one"."""
    alice = await relay.user()
    bob = await relay.user()
    msg_id = new_msg_id()
    await alice.request(
        lambda i: Send(id=i, to=bob.handle, msg_id=msg_id, intent="chat", body=b"1")
    )
    first = await bob.push(Deliver)
    bob_again = await relay.login(bob)
    assert await bob.closed() == 4000
    again = await bob_again.push(Deliver)
    assert (again.msg_id, again.sender, again.body) == (first.msg_id, alice.handle, b"1")
