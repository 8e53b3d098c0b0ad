"""Baseline for the relay benchmark: the smallest WebSocket server speaking blindrelay frames.

Why it exists: a relay figure means little alone. This forwarder is the ceiling of
the stack (websockets + msgpack in one Python process), so ``bench/relay.py`` can
report the relay as a ratio of it, measured in the same run on the same machine.

It speaks the same frames with the same transport settings as the relay (SPEC §1:
subprotocol ``blindrelay.v2``, the Noise channel of §1.3 with every frame sealed,
compression off, ``max_size`` = the largest sealed frame, the same ping
settings): the handshake, then HELLO; REGISTER or LOGIN answered with WELCOME,
without checking any signature; SEND answered with SENT at once and pushed as
DELIVER to the recipient if it is connected (dropped otherwise); ACK ignored.

What it is not: no authentication, no storage, no validation beyond a dict lookup,
no flow control, no rate limits. Never expose it; it binds 127.0.0.1 only.

``--strict`` decodes and encodes every frame through ``blindrelay.protocol.codec``
instead of raw msgpack, which isolates what strict frame handling costs.

    .venv/bin/python bench/forwarder.py [--port 0] [--strict]
    → prints ``listening ws://127.0.0.1:PORT`` once it accepts connections
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from nacl.signing import SigningKey

from blindrelay.protocol import PROTOCOL_VERSION, SUBPROTOCOL, channel, codec, limits
from blindrelay.protocol.frames import (
    Deliver,
    Hello,
    Login,
    Register,
    Send,
    Sent,
    Welcome,
)

HOST = "127.0.0.1"
"""Loopback only: the forwarder authenticates nobody."""

T_HELLO, T_REGISTER, T_LOGIN, T_WELCOME, T_SEND, T_SENT, T_DELIVER = 1, 2, 3, 4, 20, 21, 22

RELAY_SEED = os.urandom(32)
RELAY_KEY = bytes(SigningKey(RELAY_SEED).verify_key)
STATIC = channel.relay_static_key(RELAY_SEED)
BINDING = channel.static_binding(SigningKey(RELAY_SEED), STATIC.public)


class Sealed:
    """A connection inside its channel: ``send`` seals a frame (no await in between,
    so frames leave in nonce order), ``opened`` yields each frame received."""

    __slots__ = ("channel", "ws")

    def __init__(self, ws: ServerConnection, relay: channel.RelayChannel) -> None:
        self.ws = ws
        self.channel = relay

    async def send(self, frame: bytes) -> None:
        await self.ws.send(self.channel.encrypt(frame))

    async def opened(self) -> Any:
        decrypt = self.channel.decrypt
        async for message in self.ws:
            yield decrypt(message)


async def accept(ws: ServerConnection) -> Sealed:
    """The relay's side of the handshake (SPEC §1.3): message 1 in, message 2 out."""
    relay = channel.RelayChannel(STATIC, BINDING, os.urandom)
    await ws.send(relay.receive_handshake(await ws.recv()))
    return Sealed(ws, relay)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Forwarder:
    """Connected handles and the per-connection loop; raw msgpack unless ``strict``."""

    def __init__(self, strict: bool) -> None:
        self.online: dict[str, Sealed] = {}
        self.kinds: dict[str, str] = {}
        self.next_delivery_id = 0
        self.dropped = 0
        self.handle: Callable[[ServerConnection], Any] = self._strict if strict else self._raw

    def _hello(self) -> Hello:
        now = now_ms()
        return Hello(
            version=PROTOCOL_VERSION,
            relay_key=RELAY_KEY,
            challenge=os.urandom(limits.CHALLENGE_BYTES),
            expires_at=now + limits.CHALLENGE_TTL_MS,
            now=now,
        )

    async def _raw(self, socket: ServerConnection) -> None:
        handle = ""
        packb, unpackb = msgpack.packb, msgpack.unpackb
        try:
            ws = await accept(socket)
            await ws.send(codec.encode(self._hello()))
            async for data in ws.opened():
                frame = unpackb(data)
                t = frame.get("t")
                if t == T_SEND and handle:
                    at = now_ms()
                    await ws.send(
                        packb({"t": T_SENT, "re": frame["id"], "msg_id": frame["msg_id"], "at": at})
                    )
                    peer = self.online.get(frame["to"])
                    if peer is None:
                        self.dropped += 1
                        continue
                    self.next_delivery_id += 1
                    out = {
                        "t": T_DELIVER,
                        "delivery_id": self.next_delivery_id,
                        "sender": handle,
                        "sender_kind": self.kinds[handle],
                        "msg_id": frame["msg_id"],
                        "intent": frame["intent"],
                        "sent_at": at,
                        "body": frame["body"],
                    }
                    for key in ("category", "categories"):
                        if key in frame:
                            out[key] = frame[key]
                    await peer.send(packb(out))
                elif t in (T_REGISTER, T_LOGIN) and not handle:
                    handle = frame["handle"]
                    kind = frame.get("kind", self.kinds.get(handle, "user"))
                    self._login(handle, kind, ws)
                    welcome = {
                        "t": T_WELCOME,
                        "re": frame["id"],
                        "handle": handle,
                        "kind": kind,
                        "queued": 0,
                        "one_time_prekeys": 0,
                        "has_signed_prekey": False,
                    }
                    await ws.send(packb(welcome))
        except (ConnectionClosed, channel.ChannelError):
            await socket.close(channel.CLOSE_CHANNEL_FAILED)
        finally:
            self._logout(handle, socket)

    async def _strict(self, socket: ServerConnection) -> None:
        handle = ""
        try:
            ws = await accept(socket)
            await ws.send(codec.encode(self._hello()))
            async for data in ws.opened():
                frame = codec.decode(data)
                if isinstance(frame, Send) and handle:
                    at = now_ms()
                    await ws.send(codec.encode(Sent(re=frame.id, msg_id=frame.msg_id, at=at)))
                    peer = self.online.get(frame.to)
                    if peer is None:
                        self.dropped += 1
                        continue
                    self.next_delivery_id += 1
                    deliver = Deliver(
                        delivery_id=self.next_delivery_id,
                        sender=handle,
                        sender_kind=self.kinds[handle],
                        msg_id=frame.msg_id,
                        intent=frame.intent,
                        sent_at=at,
                        body=frame.body,
                        category=frame.category,
                        categories=frame.categories,
                    )
                    await peer.send(codec.encode(deliver))
                elif isinstance(frame, Register | Login) and not handle:
                    handle = frame.handle
                    kind = (
                        frame.kind
                        if isinstance(frame, Register)
                        else self.kinds.get(handle, "user")
                    )
                    self._login(handle, kind, ws)
                    welcome = Welcome(
                        re=frame.id,
                        handle=handle,
                        kind=kind,
                        queued=0,
                        one_time_prekeys=0,
                        has_signed_prekey=False,
                    )
                    await ws.send(codec.encode(welcome))
        except (ConnectionClosed, channel.ChannelError):
            await socket.close(channel.CLOSE_CHANNEL_FAILED)
        finally:
            self._logout(handle, socket)

    def _login(self, handle: str, kind: str, ws: Sealed) -> None:
        self.kinds[handle] = kind
        self.online[handle] = ws

    def _logout(self, handle: str, socket: ServerConnection) -> None:
        online = self.online.get(handle)
        if handle and online is not None and online.ws is socket:
            del self.online[handle]


async def run(port: int, strict: bool) -> None:
    forwarder = Forwarder(strict)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    async with serve(
        forwarder.handle,
        HOST,
        port,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,
        max_size=channel.MAX_TRANSPORT_MESSAGE_BYTES,
        ping_interval=limits.PING_INTERVAL_S,
        ping_timeout=limits.PING_TIMEOUT_S,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"listening ws://{HOST}:{bound}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await stop
    if forwarder.dropped:
        print(f"dropped {forwarder.dropped} envelopes for offline recipients", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--strict", action="store_true", help="use the strict protocol codec")
    args = parser.parse_args()
    asyncio.run(run(args.port, args.strict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
