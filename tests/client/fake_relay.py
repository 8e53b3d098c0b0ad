"""A relay in memory for the SDK's unit tests: the relay's protocol machine on the far end
of each connection, a transport that moves bytes through a queue, no sockets.

A :class:`FakeRelay` is a client's ``open_transport``: every connection the client
opens (reconnections included) is a :class:`RelayEnd`, which sends HELLO at once
and hands each frame the client writes to :attr:`FakeRelay.answer` — by default
:func:`answer_plainly`: REGISTER and LOGIN are checked and welcomed, prekey uploads
and statements answered OK, SENDs SENT. A test replaces ``answer`` to refuse, hold
or drop, and reads what the relay received (:meth:`RelayEnd.received`) or waits for
it (:meth:`RelayEnd.wait_for`). What a real relay decides is tested against a real
relay (tests/client/test_sdk.py and the scenario modules); this is for what the
client decides.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from typing import TypeVar

from nacl.signing import SigningKey

from blindrelay.client.transport import ConnectionLost
from blindrelay.protocol import frames
from blindrelay.protocol.connection import RelayConnection
from blindrelay.protocol.errors import ErrorCode, ProtocolError
from blindrelay.protocol.transparency import merkle
from blindrelay.protocol.transparency.treehead import sign_tree_head

from ..relays import FakeClock
from .harness import within

F = TypeVar("F", bound=frames.Frame)

RELAY_KEY = SigningKey(b"\x11" * 32)
"""The key the fake relay presents in HELLO."""
OTHER_RELAY_KEY = SigningKey(b"\x22" * 32)
"""Another relay key: another server answering at the relay's address."""
URL = "ws://relay.test"
"""What the client is told to connect to: the fake relay ignores it."""


class MemoryTransport:
    """The client's end of one connection (what :class:`WebSocketTransport` offers): as
    if the Noise channel were established (SPEC §1.3), with its handshake hash and the
    relay key it bound, and frames moved as they are."""

    def __init__(self, end: RelayEnd, handshake_hash: bytes, relay_key: bytes) -> None:
        self._end = end
        self.handshake_hash = handshake_hash
        self.relay_key = relay_key
        self._inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self.aborted = False

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionLost("connection closed")
        self._end.data_received(data)

    async def recv(self) -> bytes:
        data = await self._inbound.get()
        if data is None:
            self._inbound.put_nowait(None)  # every later recv fails too
            raise ConnectionLost("connection ended")
        return data

    async def close(self) -> None:
        self.end()

    def abort(self) -> None:
        self.aborted = True
        self.end()

    def deliver(self, data: bytes) -> None:
        if not self.closed:
            self._inbound.put_nowait(data)

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            self._inbound.put_nowait(None)


class RelayEnd:
    """The relay's end of one connection: its protocol machine and what it received."""

    def __init__(self, relay: FakeRelay, key: SigningKey) -> None:
        self.relay = relay
        handshake_hash = os.urandom(64)  # the channel's, which both ends share
        self.machine = RelayConnection(
            key.verify_key.encode(), relay.clock(), os.urandom, handshake_hash=handshake_hash
        )
        self.transport = MemoryTransport(self, handshake_hash, key.verify_key.encode())
        self._frames: list[frames.Frame] = []
        self._changed = asyncio.Event()
        self.flush()  # HELLO

    def received(self, kind: type[F] = frames.Frame) -> list[F]:  # type: ignore[assignment]
        """Every frame of ``kind`` the client wrote on this connection, in order."""
        return [frame for frame in self._frames if isinstance(frame, kind)]

    async def wait_for(self, kind: type[F], count: int = 1) -> list[F]:
        """Until the client wrote ``count`` frames of ``kind`` here; they are returned."""

        async def enough() -> None:
            while len(self.received(kind)) < count:
                self._changed.clear()
                await self._changed.wait()

        await within(enough())
        return self.received(kind)

    def send(self, *sent: frames.Frame) -> None:
        """Frames to the client, in order."""
        for frame in sent:
            self.machine.send(frame)
        self.flush()

    def refuse(self, exc: ProtocolError, re: int | None) -> None:
        """The ERROR for ``exc`` answering request ``re`` (as the relay sends it, SPEC §9)."""
        self.machine.send_error(exc, re=re)
        self.flush()

    def drop(self) -> None:
        """The connection ends (as if the relay or the network dropped it)."""
        self.transport.end()

    def flush(self) -> None:
        for data in self.machine.data_to_send():
            self.transport.deliver(data)

    def data_received(self, data: bytes) -> None:
        self.machine.receive_data(data)
        for frame in self.machine.events_received():
            self._frames.append(frame)
            self._changed.set()
            self.relay.answer(self, frame)
        self.flush()  # errors the machine queued for bad input


class FakeRelay:
    """Opens connections for a client (pass :meth:`open` as ``open_transport``)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.key = RELAY_KEY
        """Presented in every later HELLO; change it to play a relay with a new key."""
        self.ends: list[RelayEnd] = []
        self.accounts: dict[str, bytes] = {}
        """handle → identity key, as REGISTER made them."""
        self.refusals = 0
        """How many of the next openings fail (the relay cannot be reached)."""
        self.answer: Callable[[RelayEnd, frames.Frame], None] = answer_plainly
        self._opened = asyncio.Event()
        self._sent_at = itertools.count(self.clock())

    async def open(self, url: str) -> MemoryTransport:
        if self.refusals:
            self.refusals -= 1
            raise ConnectionLost(f"cannot connect to {url}: refused")
        end = RelayEnd(self, self.key)
        self.ends.append(end)
        self._opened.set()
        return end.transport

    async def connection(self, number: int) -> RelayEnd:
        """The ``number``-th connection (0 the first), once the client opened it."""

        async def opened() -> None:
            while len(self.ends) <= number:
                self._opened.clear()
                await self._opened.wait()

        await within(opened())
        return self.ends[number]

    def sent_at(self) -> int:
        """A relay timestamp for a SENT, increasing."""
        return next(self._sent_at)


def answer_plainly(end: RelayEnd, frame: frames.Frame) -> None:
    """What a relay with room for everything answers (the default :attr:`FakeRelay.answer`)."""
    relay, machine, now = end.relay, end.machine, end.relay.clock()
    if isinstance(frame, frames.Register):
        machine.verify_registration(frame, now)
        relay.accounts[frame.handle] = frame.identity_key
        end.send(welcome(frame.id, frame.handle, frame.kind))
    elif isinstance(frame, frames.Login):
        machine.verify_login(frame, relay.accounts.get(frame.handle), now)
        end.send(welcome(frame.id, frame.handle, "user"))
    elif isinstance(frame, frames.PrekeysUpload | frames.Statement):
        end.send(frames.Ok(re=frame.id))
    elif isinstance(frame, frames.Send):
        answer_sent(end, frame)


def answer_sent(end: RelayEnd, send: frames.Send) -> None:
    """The relay committed ``send``: SENT."""
    end.send(frames.Sent(re=send.id, msg_id=send.msg_id, at=end.relay.sent_at()))


def welcome(
    re: int, handle: str, kind: str, *, one_time_prekeys: int = 100, has_signed_prekey: bool = True
) -> frames.Welcome:
    """A WELCOME; by default saying the relay holds enough prekeys (no upload follows)."""
    return frames.Welcome(
        re=re, handle=handle, kind=kind, queued=0, one_time_prekeys=one_time_prekeys,
        has_signed_prekey=has_signed_prekey,
    )  # fmt: skip


def signer(key: SigningKey) -> Callable[[bytes], bytes]:
    return lambda message: key.sign(message).signature


class FakeLog:
    """A transparency log in memory, answering the log's fetches as a relay does (SPEC
    §15.6): heads signed with :data:`RELAY_KEY`, proofs computed from the entries."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.heads: list[bytes] = []

    def append(self, *entries: bytes) -> int:
        """The index of the last one appended."""
        self.entries.extend(entries)
        return len(self.entries) - 1

    def sign_head(self, timestamp: int, key: SigningKey = RELAY_KEY) -> bytes:
        leaves = [merkle.leaf_hash(e) for e in self.entries]
        signed = sign_tree_head(signer(key), len(leaves), merkle.root_of(leaves), timestamp)
        self.heads.append(signed)
        return signed

    def nodes(self, size: int) -> merkle.NodeHashes:
        """The complete subtrees of the first ``size`` entries, as a relay's store keeps them."""
        frontier, nodes = merkle.Frontier(), {}
        for entry in self.entries[:size]:
            nodes.update(frontier.append(merkle.leaf_hash(entry)))
        return lambda wanted: {node: nodes[node] for node in wanted}

    def answer(self, end: RelayEnd, frame: frames.Frame) -> bool:
        """Answer ``frame`` if it is a log fetch; whether it was."""
        if isinstance(frame, frames.LogHeadFetch):
            end.send(frames.LogHead(re=frame.id, sth=self.heads[-1] if self.heads else None))
        elif isinstance(frame, frames.LogConsistencyFetch):
            proof = merkle.consistency_proof(frame.first, frame.second, self.nodes(frame.second))
            end.send(frames.LogConsistency(re=frame.id, proof=tuple(proof)))
        elif isinstance(frame, frames.LogInclusionFetch):
            held = self.entries[: frame.size]
            if frame.entry not in held:
                end.send(frames.Error(code=ErrorCode.NOT_FOUND, re=frame.id))
            else:
                index = held.index(frame.entry)
                proof = merkle.inclusion_proof(index, frame.size, self.nodes(frame.size))
                end.send(frames.LogInclusion(re=frame.id, index=index, proof=tuple(proof)))
        else:
            return False
        return True
