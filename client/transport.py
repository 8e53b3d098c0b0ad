"""The client's WebSocket glue: the only client module that imports websockets (SPEC §1).

It opens a connection offering the ``blindrelay.v1`` subprotocol with
compression off and the frame cap as ``max_size`` (SPEC §1.1), and moves whole
binary messages. Every way a connection can fail — refused, dropped, closed by
the relay, a text message — comes out as :class:`ConnectionLost`, so the SDK
has one thing to catch before it reconnects.

Not here: frames and their meaning (``protocol.connection``, ``sdk``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from blindrelay.protocol import SUBPROTOCOL, limits

OPEN_TIMEOUT_S = 10.0
"""Handshake deadline; an unreachable relay is retried with backoff instead."""


WireTap = Callable[[str, bytes], None]
"""Called with ``("out", message)`` before a send and ``("in", message)`` after a receive."""

wire_tap: ContextVar[WireTap | None] = ContextVar("blindrelay_wire_tap", default=None)
"""Observes every message of the connections opened while it is set.

A connection takes the tap in force in the context that opens it, and a
client opens its reconnections from the task it started in ``connect``, so
setting this around ``Client.connect`` taps that client only. The demo shows
and the canary tests scan exactly the bytes the relay received and sent; the
SDK never sets it.
"""


class ConnectionLost(ConnectionError):
    """The connection to the relay could not be opened or has ended."""


class WebSocketTransport:
    """One open WebSocket to a relay, moving binary messages."""

    def __init__(self, ws: ClientConnection, tap: WireTap | None = None) -> None:
        self._ws = ws
        self._tap = tap

    @classmethod
    async def open(cls, url: str) -> WebSocketTransport:
        """Connect to ``url``; ConnectionLost if the relay cannot be reached or refuses."""
        try:
            ws = await connect(
                url,
                subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                compression=None,
                max_size=limits.MAX_FRAME_BYTES,
                ping_interval=limits.PING_INTERVAL_S,
                ping_timeout=limits.PING_TIMEOUT_S,
                open_timeout=OPEN_TIMEOUT_S,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionLost(f"cannot connect to {url}: {exc}") from exc
        return cls(ws, wire_tap.get())

    async def send(self, data: bytes) -> None:
        if self._tap is not None:
            self._tap("out", data)
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise ConnectionLost(str(exc)) from exc

    async def recv(self) -> bytes:
        """The next binary message; a text message is a relay bug and ends the connection."""
        try:
            message = await self._ws.recv()
        except ConnectionClosed as exc:
            raise ConnectionLost(str(exc)) from exc
        if not isinstance(message, bytes):
            await self.close()
            raise ConnectionLost("relay sent a text message")
        if self._tap is not None:
            self._tap("in", message)
        return message

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (crash semantics)."""
        self._ws.transport.abort()
