"""A black-box client for conformance tests: one WebSocket, raw frames, strict checks.

It speaks the wire protocol through ``blindrelay.protocol`` and a plain
``websockets`` client only; it knows nothing of any relay's internals, so the
suite runs against any implementation given its URL. Every connection starts
with the Noise handshake of SPEC §1.3 (:class:`ClientChannel`), and every frame
travels sealed; :meth:`Peer.send_wire` puts bytes on the socket as they are, for
the tests of the channel itself.

Every message the relay sends passes three checks before a test sees it:

- it is a binary message that opens in the channel (SPEC §1.3.4) and decodes
  strictly (SPEC §2.3);
- it is canonical: re-encoding the decoded frame gives the same bytes (SPEC §2.3);
- a frame with ``re`` answers a request of ours that has no answer yet, so every
  request gets at most one response and no response is invented (SPEC §2.2.1).

A failed check raises :class:`RelayViolation` naming the section.

Waiting is always for a frame or a close, bounded by ``FRAME_TIMEOUT_S``: no
test sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack
from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from blindrelay.protocol import SUBPROTOCOL
from blindrelay.protocol.channel import ChannelError, ClientChannel
from blindrelay.protocol.codec import decode, encode
from blindrelay.protocol.connection import ClientConnection
from blindrelay.protocol.crypto.keys import IdentityKeyPair, OneTimePreKey, SignedPreKey
from blindrelay.protocol.errors import ProtocolError
from blindrelay.protocol.frames import (
    REQUEST_FRAMES,
    BundleFetch,
    Deliver,
    Error,
    Frame,
    FrameType,
    Hello,
    OneTimePreKeyRecord,
    RotateIdentity,
    Send,
    SignedPreKeyRecord,
    Welcome,
)
from blindrelay.protocol.transcripts import rotate_transcript

FRAME_TIMEOUT_S = 5.0
"""Longest wait for one frame or close; a relay that stalls fails instead of hanging."""

F = TypeVar("F", bound=Frame)


class RelayViolation(AssertionError):
    """The relay sent something the SPEC forbids."""


def rng(n: int) -> bytes:
    return os.urandom(n)


def new_handle(prefix: str = "cf") -> str:
    """A fresh handle of the §3.2 form, unique enough to run the suite repeatedly."""
    return f"{prefix}-{secrets.token_hex(8)}"


def new_msg_id() -> bytes:
    return secrets.token_bytes(16)


@dataclass
class Account:
    """What a client keeps about an account: handle, kind and identity key."""

    handle: str
    kind: str
    key: IdentityKeyPair = field(default_factory=lambda: IdentityKeyPair.generate(rng))

    @property
    def public(self) -> bytes:
        return self.key.public


@dataclass(frozen=True)
class Received:
    """One relay message: the decoded frame and the exact bytes it arrived as."""

    frame: Frame
    raw: bytes


def signed_prekey(key: IdentityKeyPair, key_id: int = 1) -> SignedPreKeyRecord:
    spk = SignedPreKey.generate(key, key_id, rng)
    return SignedPreKeyRecord(key_id=key_id, public=spk.public, signature=spk.signature)


def one_time_prekeys(first_id: int, count: int) -> tuple[OneTimePreKeyRecord, ...]:
    return tuple(
        OneTimePreKeyRecord(key_id=i, public=OneTimePreKey.generate(i, rng).public)
        for i in range(first_id, first_id + count)
    )


class Peer:
    """One connection to the relay, from HELLO to close."""

    def __init__(self, ws: WebSocket, channel: ClientChannel, hello: Received) -> None:
        assert isinstance(hello.frame, Hello)
        self.ws = ws
        self.channel = channel
        """The Noise channel: its ``handshake_hash`` is what LOGIN and REGISTER sign."""
        self.hello: Hello = hello.frame
        self._hello_at = time.monotonic()
        self.account: Account | None = None
        self.welcome: Welcome | None = None
        self._next_id = 1
        self._outstanding: set[int] = set()
        self._inbox: list[Received] = []
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.sent_to: list[str] = []
        """Recipients of the SEND frames sent so far (conftest shows which crossed workers)."""

    def relay_now(self) -> int:
        """The relay's clock as HELLO reported it, moved on by our elapsed time (ms)."""
        return self.hello.now + int((time.monotonic() - self._hello_at) * 1000)

    # --- sending ---------------------------------------------------------------

    def next_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    async def send_raw(self, data: bytes, *, expect_re: int | None = None) -> None:
        """Send any bytes as a frame, sealed in the channel; ``expect_re`` is the id the
        relay may answer with."""
        if expect_re is not None:
            self._outstanding.add(expect_re)
        await self.ws.send(self.channel.encrypt(data))

    async def send_wire(self, data: bytes | str, *, expect_re: int | None = None) -> None:
        """Put ``data`` on the socket as one WebSocket message, outside the channel
        (``expect_re`` as for :meth:`send_raw`, for a message sealed by the test)."""
        if expect_re is not None:
            self._outstanding.add(expect_re)
        await self.ws.send(data)

    async def send(self, frame: Frame) -> None:
        """Send a frame canonically; a request's id is registered as awaiting its answer."""
        request_id = getattr(frame, "id", None) if frame.TYPE in REQUEST_FRAMES else None
        if isinstance(frame, Send):
            self.sent_to.append(frame.to)
        await self.send_raw(encode(frame), expect_re=request_id)

    async def request(self, build: Callable[[int], Frame]) -> Frame:
        """Send ``build(id)`` with a fresh id and return its one response."""
        return (await self.request_raw(build)).frame

    async def request_raw(self, build: Callable[[int], Frame]) -> Received:
        frame = build(self.next_id())
        await self.send(frame)
        return await self.response_raw(frame.id)  # type: ignore[union-attr]

    # --- receiving -------------------------------------------------------------

    async def _read(self, timeout: float = FRAME_TIMEOUT_S) -> Received:
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            raise
        if not isinstance(data, bytes):
            raise RelayViolation(f"SPEC §1.1.3: relay sent a text message {data[:80]!r}")
        try:
            data = self.channel.decrypt(data)
        except ChannelError as exc:
            raise RelayViolation(f"SPEC §1.3.4: relay sent a message that fails ({exc})") from None
        try:
            frame = decode(data)
        except ProtocolError as exc:
            raise RelayViolation(f"SPEC §2.3: relay sent an invalid frame ({exc})") from None
        if encode(frame) != data:
            raise RelayViolation(f"SPEC §2.3: relay sent a non-canonical {frame.TYPE.name}")
        re = getattr(frame, "re", None)
        if re is not None:
            if re not in self._outstanding:
                raise RelayViolation(
                    f"SPEC §2.2.1: {frame.TYPE.name} re={re} answers no open request of ours"
                )
            self._outstanding.discard(re)
        return Received(frame, data)

    async def recv_raw(self, timeout: float = FRAME_TIMEOUT_S) -> Received:
        """The next message not yet consumed, in arrival order."""
        if self._inbox:
            return self._inbox.pop(0)
        return await self._read(timeout)

    async def recv(self, timeout: float = FRAME_TIMEOUT_S) -> Frame:
        return (await self.recv_raw(timeout)).frame

    async def _first(self, match: Callable[[Frame], bool]) -> Received:
        for i, item in enumerate(self._inbox):
            if match(item.frame):
                return self._inbox.pop(i)
        while True:
            item = await self._read()
            if match(item.frame):
                return item
            self._inbox.append(item)

    async def response_raw(self, re: int) -> Received:
        """The response to request ``re``; pushes meanwhile stay queued for later."""
        return await self._first(lambda f: getattr(f, "re", None) == re)

    async def response(self, re: int) -> Frame:
        return (await self.response_raw(re)).frame

    async def push(self, cls: type[F]) -> F:
        """The next frame of type ``cls`` that answers no request."""
        item = await self._first(lambda f: isinstance(f, cls) and getattr(f, "re", None) is None)
        return item.frame  # type: ignore[return-value]

    async def push_raw(self, cls: type[Frame]) -> Received:
        return await self._first(lambda f: isinstance(f, cls) and getattr(f, "re", None) is None)

    async def deliveries(self, count: int) -> list[Deliver]:
        return [await self.push(Deliver) for _ in range(count)]

    def pending(self) -> list[Frame]:
        """Frames received but not consumed yet."""
        return [item.frame for item in self._inbox]

    async def closed(self, timeout: float = FRAME_TIMEOUT_S) -> int | None:
        """Wait for the relay to close; frames arriving meanwhile stay queued."""
        try:
            while True:
                self._inbox.append(await self._read(timeout))
        except ConnectionClosed:
            return self.close_code

    async def round_trip(self) -> list[Frame]:
        """A cheap request/response; returns every push that arrived before the answer.

        Used to show that nothing was sent in answer to an earlier message: the
        relay answers a connection's messages in order, so a reply to the earlier
        message would have come first.
        """
        request_id = self.next_id()
        await self.send(BundleFetch(id=request_id, handle=new_handle("nobody")))
        before: list[Frame] = []
        while True:
            item = await self.recv_raw()
            if getattr(item.frame, "re", None) == request_id:
                return before
            before.append(item.frame)

    # --- authentication --------------------------------------------------------

    async def register(self, account: Account) -> Frame:
        """REGISTER through the sans-I/O client machine; returns WELCOME or ERROR."""
        machine = self._machine()
        request_id = machine.register(
            account.handle, account.kind, account.public, account.key.sign
        )
        return await self._authenticate(machine, request_id, account)

    async def login(self, account: Account) -> Frame:
        machine = self._machine()
        request_id = machine.login(account.handle, account.key.sign)
        return await self._authenticate(machine, request_id, account)

    def _machine(self) -> ClientConnection:
        machine = ClientConnection(self.channel.handshake_hash, self.channel.relay_key)
        machine.receive_data(encode(self.hello))
        return machine

    async def _authenticate(
        self, machine: ClientConnection, request_id: int, account: Account
    ) -> Frame:
        for data in machine.data_to_send():
            await self.send_raw(data, expect_re=request_id)
        self._next_id = max(self._next_id, request_id + 1)
        frame = await self.response(request_id)
        if isinstance(frame, Welcome):
            self.account, self.welcome = account, frame
        return frame

    @property
    def handle(self) -> str:
        assert self.account is not None, "not authenticated"
        return self.account.handle

    async def close(self) -> None:
        await self.ws.close()


async def open_socket(url: str, subprotocols: Sequence[str] = (SUBPROTOCOL,)) -> WebSocket:
    """A WebSocket to the relay, nothing sent on it yet."""
    return await connect(
        url,
        subprotocols=[Subprotocol(p) for p in subprotocols],
        compression=None,
        proxy=None,
        open_timeout=FRAME_TIMEOUT_S,
        max_size=None,
        max_queue=None,  # unread pushes (PREKEYS_LOW…) must never stall the close handshake
    )


async def handshake(ws: WebSocket) -> ClientChannel:
    """SPEC §1.3: message 1 out, message 2 in and checked (its relay key binding)."""
    channel = ClientChannel(rng)
    await ws.send(channel.start())
    reply = await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S)
    if not isinstance(reply, bytes):
        raise RelayViolation("SPEC §1.3.3: handshake message 2 must be a binary message")
    try:
        channel.receive_handshake(reply)
    except ChannelError as exc:
        raise RelayViolation(f"SPEC §1.3: the relay's handshake fails ({exc})") from None
    return channel


async def open_peer(url: str, subprotocols: Sequence[str] = (SUBPROTOCOL,)) -> Peer:
    """Connect, run the handshake and read HELLO, the relay's first frame (SPEC §4.1)."""
    ws = await open_socket(url, subprotocols)
    channel = await handshake(ws)
    data = await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S)
    if not isinstance(data, bytes):
        raise RelayViolation("SPEC §1.1.3: HELLO must be a binary message")
    try:
        data = channel.decrypt(data)
    except ChannelError as exc:
        raise RelayViolation(f"SPEC §1.3.4: HELLO does not open ({exc})") from None
    frame = decode(data)
    if not isinstance(frame, Hello):
        raise RelayViolation(f"SPEC §4.1: first frame is {frame.TYPE.name}, not HELLO")
    if frame.relay_key != channel.relay_key:
        raise RelayViolation("SPEC §1.3.2: HELLO names another relay key than the handshake")
    return Peer(ws, channel, Received(frame, data))


def non_canonical(value: object) -> bytes:
    """msgpack in the longest forms and reversed key order: valid, but not canonical.

    Ints as 64-bit, str as str32, bin as bin32, arrays and maps with 32-bit headers,
    map keys last to first. Used to check that the relay keeps signed objects byte for
    byte instead of re-encoding them (SPEC §14).
    """
    if value is None or isinstance(value, bool):
        return msgpack.packb(value)  # type: ignore[no-any-return]
    if isinstance(value, int):
        return b"\xd3" + value.to_bytes(8, "big", signed=True)
    if isinstance(value, str):
        value = value.encode()
        return b"\xdb" + len(value).to_bytes(4, "big") + value
    if isinstance(value, bytes):
        return b"\xc6" + len(value).to_bytes(4, "big") + value
    if isinstance(value, list | tuple):
        return b"\xdd" + len(value).to_bytes(4, "big") + b"".join(map(non_canonical, value))
    if isinstance(value, dict):
        pairs = list(value.items())[::-1]
        body = b"".join(non_canonical(k) + non_canonical(v) for k, v in pairs)
        return b"\xdf" + len(pairs).to_bytes(4, "big") + body
    raise TypeError(type(value).__name__)


def error_code(frame: Frame) -> int | None:
    """The code of an ERROR frame, or None for any other frame (readable in asserts)."""
    return frame.code if isinstance(frame, Error) else None


__all__ = [
    "FRAME_TIMEOUT_S",
    "Account",
    "FrameType",
    "Peer",
    "Received",
    "RelayViolation",
    "error_code",
    "handshake",
    "new_handle",
    "new_msg_id",
    "non_canonical",
    "one_time_prekeys",
    "open_peer",
    "open_socket",
    "signed_prekey",
]


def rotation(
    peer: Peer,
    new_key: IdentityKeyPair,
    *,
    issued_at: int | None = None,
    old_key: IdentityKeyPair | None = None,
    sign_new: IdentityKeyPair | None = None,
    request_id: int | None = None,
) -> RotateIdentity:
    """ROTATE_IDENTITY to ``new_key`` (SPEC §3.4), both transcripts signed; the keyword
    arguments forge one part of it."""
    account = peer.account
    issued_at = peer.relay_now() if issued_at is None else issued_at
    transcript = rotate_transcript(
        peer.hello.relay_key, account.handle, account.public, new_key.public, issued_at
    )
    return RotateIdentity(
        id=request_id or peer.next_id(),
        new_identity_key=new_key.public,
        issued_at=issued_at,
        old_signature=(old_key or account.key).sign(transcript),
        new_signature=(sign_new or new_key).sign(transcript),
    )
