"""The client's WebSocket glue (client/transport.py), on its own, against a bare
WebSocket server on 127.0.0.1 port 0 (no relay behind it).

What it owns: the handshake it offers (the ``blindrelay.v2`` subprotocol, no
compression, the sealed frame cap, SPEC §1.1), the Noise handshake and sealing
every frame (SPEC §1.3; the server here answers it with
:class:`~blindrelay.protocol.channel.RelayChannel`), moving whole frames, every
failure as one :class:`ConnectionLost`, an abort without a closing handshake,
and the wire tap an application asks for explicitly (:func:`tapped`) — used by
the client for every connection it opens, reconnections included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from blindrelay.client.keystore import MemoryKeyStore
from blindrelay.client.sdk import Backoff, Client
from blindrelay.client.transport import (
    ChannelFailed,
    ConnectionLost,
    HandshakeRefused,
    WebSocketTransport,
    tapped,
)
from blindrelay.protocol import SUBPROTOCOL, channel, limits
from blindrelay.protocol.channel import MAX_TRANSPORT_MESSAGE_BYTES, RelayChannel

from ..relays import relay_at
from ..sealed import SealedSocket

WAIT_S = 10.0
"""Longest wait for one event on loopback; a healthy run needs milliseconds."""


RELAY_SEED = b"\x03" * 32


def relay_channel(seed: bytes = RELAY_SEED, binding: bytes | None = None) -> RelayChannel:
    """The relay's end of the channel; ``binding`` replaces its own (a forger's)."""
    static = channel.relay_static_key(seed)
    if binding is None:
        binding = channel.static_binding(SigningKey(seed), static.public)
    return RelayChannel(static, binding, os.urandom)


class Peer:
    """The server's side of the connections a test opened: what it saw and got."""

    def __init__(self, relay: Callable[[], RelayChannel] = relay_channel) -> None:
        self.connected: asyncio.Queue[SealedSocket] = asyncio.Queue()
        self.headers: list[Headers] = []
        self.ended: asyncio.Queue[ConnectionClosed] = asyncio.Queue()
        self._relay = relay

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.headers.append(ws.request.headers)
        relay = self._relay()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(relay.receive_handshake(await ws.recv()))
        await self.connected.put(SealedSocket(ws, relay))
        try:
            await ws.wait_closed()
        finally:
            assert isinstance(ws.close_exc, ConnectionClosed)
            await self.ended.put(ws.close_exc)

    async def next(self) -> SealedSocket:
        return await asyncio.wait_for(self.connected.get(), WAIT_S)


@asynccontextmanager
async def server(
    peer: Peer,
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
) -> AsyncIterator[str]:
    """A WebSocket server speaking our subprotocol, as a relay's socket would."""
    running: Server = await serve(
        peer.handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None, process_request=process_request,
    )  # fmt: skip
    async with running:
        host, port = running.sockets[0].getsockname()[:2]
        yield f"ws://{host}:{port}"


@pytest.fixture
def peer() -> Peer:
    return Peer()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- opening ----------------------------------------------------------------------------


async def test_the_handshake_offers_our_subprotocol_and_no_compression(peer: Peer) -> None:
    """SPEC §1.1; ciphertext does not compress, and deflate cost 3× the memory."""
    async with server(peer) as url:
        transport = await WebSocketTransport.open(url)
        ws = await peer.next()
        assert ws.subprotocol == SUBPROTOCOL
        [headers] = peer.headers
        assert headers["Sec-WebSocket-Protocol"] == SUBPROTOCOL
        assert "Sec-WebSocket-Extensions" not in headers
        await transport.close()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/", "ws://", "ws://127.0.0.1:{port}"],
    ids=["scheme", "host", "refused"],
)
async def test_a_relay_that_cannot_be_reached_is_connection_lost(url: str) -> None:
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await WebSocketTransport.open(url.format(port=free_port()))


async def test_a_refused_handshake_is_connection_lost(peer: Peer) -> None:
    def refuse(ws: ServerConnection, request: Request) -> Response:
        return ws.respond(403, "closed relay\n")

    async with server(peer, refuse) as url:
        with pytest.raises(ConnectionLost, match="403"):
            await WebSocketTransport.open(url)


# --- moving messages ------------------------------------------------------------------------


async def test_binary_messages_move_whole_both_ways(peer: Peer) -> None:
    async with server(peer) as url:
        transport = await WebSocketTransport.open(url)
        ws = await peer.next()
        largest = bytes(range(256)) * (limits.MAX_FRAME_BYTES // 256) + bytes(239)
        assert len(largest) == limits.MAX_FRAME_BYTES
        for data in (b"\x00", largest):
            await transport.send(data)
            assert await asyncio.wait_for(ws.recv(), WAIT_S) == data
            await ws.send(data)
            assert await asyncio.wait_for(transport.recv(), WAIT_S) == data
        await transport.close()


async def test_a_message_over_the_frame_cap_ends_the_connection(peer: Peer) -> None:
    """SPEC §1.1.5: the cap is the WebSocket ``max_size``, the largest sealed frame:
    nothing larger is read."""
    async with server(peer) as url:
        transport = await WebSocketTransport.open(url)
        ws = await peer.next()
        await ws.raw.send(b"x" * (MAX_TRANSPORT_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(transport.recv(), WAIT_S)
        closed = await asyncio.wait_for(peer.ended.get(), WAIT_S)
        assert closed.rcvd is not None and closed.rcvd.code == 1009  # message too big


async def test_a_text_message_fails_the_channel_and_ends_the_connection_with_4001(
    peer: Peer,
) -> None:
    async with server(peer) as url:
        transport = await WebSocketTransport.open(url)
        ws = await peer.next()
        await ws.send("not a frame")
        with pytest.raises(ChannelFailed, match="text message"):
            await asyncio.wait_for(transport.recv(), WAIT_S)
        closed = await asyncio.wait_for(peer.ended.get(), WAIT_S)
        assert closed.rcvd is not None and closed.rcvd.code == 4001  # SPEC §1.3.6


@pytest.mark.parametrize("attack", ["tamper", "replay", "reorder", "forge"])
async def test_a_transport_message_that_fails_ends_the_connection_with_4001(
    peer: Peer, attack: str
) -> None:
    """SPEC §1.3.6, the client's side: nothing that fails is passed on."""
    async with server(peer) as url:
        transport = await WebSocketTransport.open(url)
        ws = await peer.next()
        one, two = ws.channel.encrypt(b"one"), ws.channel.encrypt(b"two")
        if attack == "tamper":
            await ws.raw.send(one[:-1] + bytes([one[-1] ^ 1]))
        elif attack == "replay":
            await ws.raw.send(one)
            assert await asyncio.wait_for(transport.recv(), WAIT_S) == b"one"
            await ws.raw.send(one)
        elif attack == "reorder":
            await ws.raw.send(two)
        else:
            await ws.raw.send(os.urandom(len(one)))
        with pytest.raises(ChannelFailed):
            await asyncio.wait_for(transport.recv(), WAIT_S)
        closed = await asyncio.wait_for(peer.ended.get(), WAIT_S)
        assert closed.rcvd is not None and closed.rcvd.code == 4001


async def test_a_relay_whose_static_key_its_relay_key_did_not_sign_is_refused() -> None:
    """SPEC §1.3.2: an endpoint with a static key of its own, naming the real relay key,
    fails the handshake; the client sends nothing more and never falls back."""
    real = channel.static_binding(
        SigningKey(RELAY_SEED), channel.relay_static_key(RELAY_SEED).public
    )
    peer = Peer(lambda: relay_channel(seed=b"\x04" * 32))
    forger = Peer(lambda: relay_channel(seed=b"\x04" * 32, binding=real))
    async with server(peer) as url:  # an honest relay of another key: the handshake passes
        transport = await WebSocketTransport.open(url)
        assert transport.relay_key == bytes(SigningKey(b"\x04" * 32).verify_key)
        await transport.close()
    async with server(forger) as url:
        with pytest.raises(HandshakeRefused, match="not signed"):
            await WebSocketTransport.open(url)
        ws = await forger.next()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.raw.recv(), WAIT_S)  # closed, nothing sent


async def test_the_frames_on_the_socket_are_sealed(peer: Peer) -> None:
    async with server(peer) as url:
        transport = await WebSocketTransport.open(url)
        ws = await peer.next()
        await transport.send(b"a frame in the clear")
        on_the_socket = await asyncio.wait_for(ws.raw.recv(), WAIT_S)
        assert isinstance(on_the_socket, bytes) and b"clear" not in on_the_socket
        assert ws.channel.decrypt(on_the_socket) == b"a frame in the clear"
        await transport.close()


async def test_a_connection_the_relay_closed_is_lost_for_receiving_and_sending(
    peer: Peer,
) -> None:
    async with server(peer) as url:
        transport = await WebSocketTransport.open(url)
        ws = await peer.next()
        await ws.close(1001, "going away")
        with pytest.raises(ConnectionLost, match="1001"):
            await asyncio.wait_for(transport.recv(), WAIT_S)
        with pytest.raises(ConnectionLost):
            await transport.send(b"too late")


async def test_abort_drops_the_connection_without_a_closing_handshake(peer: Peer) -> None:
    """How a test makes a client look crashed to the relay."""
    async with server(peer) as url:
        transport = await WebSocketTransport.open(url)
        await peer.next()
        transport.abort()
        closed = await asyncio.wait_for(peer.ended.get(), WAIT_S)
        assert closed.rcvd is None  # no close frame ever came: 1006


# --- the wire tap ---------------------------------------------------------------------------


async def test_a_tap_sees_every_message_out_before_it_is_sent_and_in_once_received(
    peer: Peer,
) -> None:
    seen: list[tuple[str, bytes]] = []
    async with server(peer) as url:
        transport = await tapped(lambda way, data: seen.append((way, data)))(url)
        ws = await peer.next()
        await transport.send(b"question")
        assert seen == [("out", b"question")]
        assert await asyncio.wait_for(ws.recv(), WAIT_S) == b"question"
        await ws.send(b"answer")
        assert await asyncio.wait_for(transport.recv(), WAIT_S) == b"answer"
        assert seen == [("out", b"question"), ("in", b"answer")]
        await ws.send("text")
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(transport.recv(), WAIT_S)
        assert len(seen) == 2  # what is refused is not passed on as a message


async def test_without_a_tap_nothing_is_observed(peer: Peer) -> None:
    """No process-wide hook either: a tapped client beside it sees only its own bytes."""
    seen: list[tuple[str, bytes]] = []
    async with server(peer) as url:
        plain = await WebSocketTransport.open(url)
        tapped_one = await tapped(lambda way, data: seen.append((way, data)))(url)
        await plain.send(b"private")
        await tapped_one.send(b"shown")
        assert seen == [("out", b"shown")]
        await plain.close()
        await tapped_one.close()


async def test_a_client_opens_every_connection_through_its_opener_reconnections_too(
    tmp_path: Path,
) -> None:
    opened: list[str] = []
    seen: list[tuple[str, bytes]] = []
    tap = tapped(lambda way, data: seen.append((way, data)))

    async def opener(url: str) -> WebSocketTransport:
        opened.append(url)
        return await tap(url)

    reconnected = asyncio.Event()
    async with relay_at(tmp_path) as relay:
        client = Client(
            MemoryKeyStore(), open_transport=opener, jitter=lambda: 0.0,
            backoff=Backoff(initial=0.01, factor=2.0, cap=0.05),
            on_connected=lambda welcome: reconnected.set(),
        )  # fmt: skip
        await asyncio.wait_for(client.connect(relay.url), WAIT_S)
        await asyncio.wait_for(client.register("alice"), WAIT_S)
        reconnected.clear()
        session = relay.ctx.sessions.get("alice")
        assert session is not None
        session.transport.close(1011, "test drop")
        await asyncio.wait_for(reconnected.wait(), WAIT_S)
        assert opened == [relay.url, relay.url]
        assert {way for way, _ in seen} == {"in", "out"}
        await client.close()
