"""The client's WebSocket glue: the only client module that imports websockets (SPEC §1).

It opens a connection offering the ``blindrelay.v2`` subprotocol with
compression off and the sealed frame cap as ``max_size`` (SPEC §1.1), runs the
Noise handshake (SPEC §1.3, :class:`~blindrelay.protocol.channel.ClientChannel`)
before anything else, and then moves whole frames, each sealed in one binary
message. Every way a connection can fail — refused, dropped, closed by the
relay, a text message, a message that fails the channel — comes out as
:class:`ConnectionLost`, so the SDK has one thing to catch before it reconnects;
a relay whose static key is not bound to the relay key it names is
:class:`~blindrelay.protocol.channel.NoiseHandshakeFailed` (a ConnectionLost
too), and no frame is ever sent outside the channel.

An application that must see the frames (the demo shows them, tests search
them) gives the client a transport opener that taps them (:func:`tapped`): the
tap sees each frame inside the channel, as the relay reads it; on the socket
there is only ciphertext. Nothing is observed otherwise.

Not here: frames and their meaning (``protocol.connection``, ``sdk``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from functools import partial

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from blindrelay.protocol import SUBPROTOCOL, limits
from blindrelay.protocol.channel import (
    MAX_TRANSPORT_MESSAGE_BYTES,
    ChannelError,
    ClientChannel,
    NoiseHandshakeFailed,
)
from blindrelay.protocol.noise import Rng

OPEN_TIMEOUT_S = 10.0
"""Handshake deadline; an unreachable relay is retried with backoff instead."""


WireTap = Callable[[str, bytes], None]
"""Called with ``("out", frame)`` before a send and ``("in", frame)`` after a receive:
frames as the relay reads them, inside the channel."""


OpenTransport = Callable[[str], Awaitable["WebSocketTransport"]]
"""How a client opens each connection to a relay URL, its reconnections included
(``Client(open_transport=…)``); :meth:`WebSocketTransport.open` unless told otherwise."""


def tapped(tap: WireTap) -> OpenTransport:
    """Open connections whose every message ``tap`` sees: for a client whose wire is
    shown (the demo) or searched (the canary tests). Nothing else observes the wire."""
    return partial(WebSocketTransport.open, tap=tap)


class ConnectionLost(ConnectionError):
    """The connection to the relay could not be opened or has ended."""


class ChannelFailed(ConnectionLost):
    """A message failed the channel (SPEC §1.3.6): the connection is closed with 4001."""


class HandshakeRefused(ConnectionLost, NoiseHandshakeFailed):
    """The Noise handshake failed: the relay's static key is not bound to the relay
    key it names, or its message is malformed (SPEC §1.3). Nothing was sent."""


class WebSocketTransport:
    """One open WebSocket to a relay, moving frames sealed in its channel."""

    def __init__(
        self, ws: ClientConnection, channel: ClientChannel, tap: WireTap | None = None
    ) -> None:
        self._ws = ws
        self._channel = channel
        self._tap = tap

    @property
    def handshake_hash(self) -> bytes:
        """The channel binding that LOGIN and REGISTER sign (SPEC §4.2)."""
        assert self._channel.handshake_hash is not None  # established by open()
        return self._channel.handshake_hash

    @property
    def relay_key(self) -> bytes:
        """The relay key the relay's static key is bound to (SPEC §1.3.2)."""
        assert self._channel.relay_key is not None  # established by open()
        return self._channel.relay_key

    @classmethod
    async def open(
        cls, url: str, tap: WireTap | None = None, *, rng: Rng = os.urandom
    ) -> WebSocketTransport:
        """Connect to ``url`` and run the handshake; ConnectionLost if the relay cannot
        be reached or refuses, :class:`HandshakeRefused` if the handshake fails.
        ``tap``, if any, sees every frame of this connection (:func:`tapped`)."""
        try:
            ws = await connect(
                url,
                subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                compression=None,
                max_size=MAX_TRANSPORT_MESSAGE_BYTES,
                ping_interval=limits.PING_INTERVAL_S,
                ping_timeout=limits.PING_TIMEOUT_S,
                open_timeout=OPEN_TIMEOUT_S,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionLost(f"cannot connect to {url}: {exc}") from exc
        channel = ClientChannel(rng)
        try:
            await ws.send(channel.start())
            reply = await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S)
            channel.receive_handshake(reply)
        except ChannelError as exc:
            await ws.close()
            raise HandshakeRefused(f"{url}: {exc}") from exc
        except (ConnectionClosed, TimeoutError) as exc:
            ws.transport.abort()
            raise ConnectionLost(f"no handshake from {url}: {exc}") from exc
        return cls(ws, channel, tap)

    async def send(self, data: bytes) -> None:
        """Seal and send one frame. Sealing and handing to websockets happen without
        a pause between them, so frames leave in the order of their nonces."""
        if self._tap is not None:
            self._tap("out", data)
        try:
            await self._ws.send(self._channel.encrypt(data))
        except ConnectionClosed as exc:
            raise ConnectionLost(str(exc)) from exc
        except ChannelError as exc:
            self.abort()
            raise ChannelFailed(str(exc)) from exc

    async def recv(self) -> bytes:
        """The next frame. A message that fails the channel (a text message included)
        closes the connection with 4001 (SPEC §1.3.6)."""
        try:
            message = await self._ws.recv()
        except ConnectionClosed as exc:
            raise ConnectionLost(str(exc)) from exc
        try:
            frame = self._channel.decrypt(message)
        except ChannelError as exc:
            await self._ws.close(4001, "channel failed")
            raise ChannelFailed(f"relay sent a message that fails the channel: {exc}") from exc
        if self._tap is not None:
            self._tap("in", frame)
        return frame

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (crash semantics)."""
        self._ws.transport.abort()
