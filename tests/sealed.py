"""A websockets connection inside its Noise channel (SPEC §1.3), for tests on either side.

``send`` seals bytes (a str goes out as it is: a text message, which fails the
channel), ``recv`` opens what arrives; ``raw`` is the socket itself and every other
attribute is the socket's. Tests written before the channel speak frames through it
unchanged.
"""

from __future__ import annotations

from typing import Any

from blindrelay.protocol.channel import ClientChannel, RelayChannel


class SealedSocket:
    def __init__(self, ws: Any, channel: ClientChannel | RelayChannel) -> None:
        self.raw = ws
        self.channel = channel

    async def send(self, data: bytes | str) -> None:
        await self.raw.send(self.channel.encrypt(data) if isinstance(data, bytes) else data)

    async def recv(self) -> bytes:
        return self.channel.decrypt(await self.raw.recv())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    async def __aenter__(self) -> SealedSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.raw.close()
