"""The client's WebSocket glue: the only client module that imports websockets (SPEC §1).

It opens a connection offering the ``blindrelay.v1`` subprotocol with
compression off and the frame cap as ``max_size`` (SPEC §1.1), and moves whole
binary messages. Every way a connection can fail — refused, dropped, closed by
the relay, a text message — comes out as :class:`ConnectionLost`, so the SDK
has one thing to catch before it reconnects.

An application that must see the bytes (the demo shows them, the canary tests
search them) gives the client a transport opener that taps them
(:func:`tapped`); nothing is observed otherwise.

Not here: frames and their meaning (``protocol.connection``, ``sdk``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from blindrelay.protocol import SUBPROTOCOL, limits

OPEN_TIMEOUT_S = 10.0
"""Handshake deadline; an unreachable relay is retried with backoff instead."""


WireTap = Callable[[str, bytes], None]
"""Called with ``("out", message)`` before a send and ``("in", message)`` after a receive."""


OpenTransport = Callable[[str], Awaitable["WebSocketTransport"]]
"""How a client opens each connection to a relay URL, its reconnections included
(``Client(open_transport=…)``); :meth:`WebSocketTransport.open` unless told otherwise."""


def tapped(tap: WireTap) -> OpenTransport:
    """Open connections whose every message ``tap`` sees: for a client whose wire is
    shown (the demo) or searched (the canary tests). Nothing else observes the wire."""
    return partial(WebSocketTransport.open, tap=tap)


class ConnectionLost(ConnectionError):
    """The connection to the relay could not be opened or has ended."""


class WebSocketTransport:
    """One open WebSocket to a relay, moving binary messages."""

    def __init__(self, ws: ClientConnection, tap: WireTap | None = None) -> None:
        self._ws = ws
        self._tap = tap

    @classmethod
    async def open(cls, url: str, tap: WireTap | None = None) -> WebSocketTransport:
        """Connect to ``url``; ConnectionLost if the relay cannot be reached or refuses.
        ``tap``, if any, sees every message of this connection (:func:`tapped`)."""
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
        return cls(ws, tap)

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
