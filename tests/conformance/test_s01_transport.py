"""SPEC §1 Transport: WebSocket, subprotocol, binary frames, no compression, size cap."""

from __future__ import annotations

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from blindrelay.protocol import SUBPROTOCOL, limits
from blindrelay.protocol.frames import Deliver, Error, Send, Sent, Welcome

from .wire import FRAME_TIMEOUT_S, Account, new_handle, new_msg_id


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
    """SPEC: "The client MUST offer the subprotocol `blindrelay.v1`" — and the relay picks it."""
    peer = await relay.connect()
    assert peer.ws.subprotocol == SUBPROTOCOL


@pytest.mark.spec("1.1.3")
async def test_text_message_gets_error_100_and_the_connection_stays_open(relay):
    """SPEC: "A relay that receives a text message MUST answer ERROR 100 MALFORMED_FRAME and
    keep the connection open"."""
    peer = await relay.connect()
    await peer.send_raw("hello")
    error = await peer.recv()
    assert isinstance(error, Error)
    assert (error.code, error.re) == (100, None)
    welcome = await peer.register(Account(new_handle("text"), "user"))
    assert isinstance(welcome, Welcome)


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
    """SPEC: "Either side MUST refuse a message larger than MAX_FRAME_BYTES (65,536 bytes) by
    closing the connection with WebSocket close code 1009"."""
    peer = await relay.user()
    await peer.send_raw(b"\x80" + bytes(limits.MAX_FRAME_BYTES))
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
    await offender.send_raw(bytes(limits.MAX_FRAME_BYTES + 1))
    assert await offender.closed() == 1009
    sent = await alice.request(
        lambda i: Send(id=i, to=bob.handle, msg_id=new_msg_id(), intent="chat", body=b"still here")
    )
    assert isinstance(sent, Sent)
    assert (await bob.push(Deliver)).body == b"still here"


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
