"""One WebSocket connection's reading side for the relay: whole frames in, in order,
a bounded number at a time.

Why a module of its own: this is where the relay reads past websockets' parser —
:class:`RelayWebSocket` hands whole binary frames straight to the connection's
:class:`Intake` inside ``data_received`` (:func:`read_frames`, when
:func:`at_frame_boundary` says the parser is where it would be anyway) — and where a
connection's frames wait while it is held (SPEC §1.2.6). tests/server/test_relay.py
checks the frames read here against websockets' own; the version is pinned. The writing
side, and the flow control that holds an intake, is :mod:`.transport`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from types import GeneratorType
from typing import Any, cast
from typing import Protocol as Interface

from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Event, Protocol
from websockets.protocol import State as WsState
from websockets.streams import StreamReader

from blindrelay.protocol import limits

from .logs import log_event

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension (what websockets.frames does)
    from websockets.utils import apply_mask

_PARSE_CODE = Protocol.parse.__code__
_AT_EOF_CODE = StreamReader.at_eof.__code__


def at_frame_boundary(protocol: Protocol) -> bool:
    """Whether websockets' parser waits for the first byte of a frame, with nothing
    buffered, on an open connection, outside a fragmented message, with no
    extension: then bytes may be read as frames without it (:func:`read_frames`)
    and it is still where it would have been. An empty buffer alone does not
    say so (the parser may wait for the payload of a frame whose head it read),
    hence the look at what the parser generator is suspended in."""
    if (
        protocol.state is not WsState.OPEN
        or protocol.current_size is not None
        or protocol.extensions
        or protocol.reader.buffer
    ):
        return False
    # A server's parser is ServerProtocol.parse, delegating to Protocol.parse after
    # the handshake: follow the chain of generators down to where it is suspended.
    caller, waiting = None, cast("GeneratorType[None, None, None]", protocol.parser)
    while isinstance(waiting.gi_yieldfrom, GeneratorType):
        caller, waiting = waiting, waiting.gi_yieldfrom
    return waiting.gi_code is _AT_EOF_CODE and caller is not None and caller.gi_code is _PARSE_CODE


def read_frames(protocol: Protocol, data: bytes, on_message: Callable[[bytes], None]) -> int:
    """Hand the whole frames at the start of ``data`` to ``on_message``; bytes taken.

    Only frames websockets would deliver unchanged as a whole binary message
    are read here: FIN + BINARY with no RSV bit, masked (a client's), a 7- or
    16-bit length within the size limit, all of it in ``data``. It stops at
    the first other byte and leaves the rest, including every error, to
    websockets. Call only when :func:`at_frame_boundary` holds.
    """
    limit = protocol.max_message_size
    if protocol.max_fragment_size is not None:
        fragment = protocol.max_fragment_size
        limit = fragment if limit is None else min(limit, fragment)
    end = len(data)
    at = 0
    while end - at >= 6 and protocol.state is WsState.OPEN:
        if data[at] != 0x82:  # FIN, no RSV bit, BINARY
            break
        size = data[at + 1] ^ 0x80  # the mask bit must be set
        if size < 126:
            start = at + 6
        elif size == 126:
            size = int.from_bytes(data[at + 2 : at + 4], "big")
            start = at + 8
        else:  # unmasked, or a 64-bit length: websockets decides
            break
        stop = start + size
        if stop > end or (limit is not None and size > limit):
            break
        payload = apply_mask(data[start:stop], data[start - 4 : start])
        at = stop
        on_message(payload)
    return at


class RelayWebSocket(ServerConnection):
    """A websockets connection that hands each whole binary message straight to
    the session, inside ``data_received``.

    Why: websockets otherwise queues every message in its assembler and wakes
    the connection's handler task to ``recv`` it — a future and a task switch
    per frame, for a handler that never awaits. Whatever websockets does not
    deliver whole (text, fragments, anything before :meth:`direct`) goes to the
    assembler as usual, and from then on everything does, so order is kept.

    It also tells its :attr:`flow` when asyncio pauses and resumes writing, and
    pauses reading while anyone holds it (:meth:`hold_reading`): websockets'
    assembler when full, the relay's :class:`Intake` when held. And it bounds the
    client's pings (SPEC §1.2.1, :data:`~blindrelay.protocol.limits.MAX_CLIENT_PINGS`):
    websockets answers every one, before any handshake, and no error budget counts them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_message: Callable[[bytes], None] | None = None
        self._assembled = 0
        self.flow: FlowListener | None = None
        """Told when asyncio's transport pauses and resumes writing, and when the
        connection is lost (:class:`WebSocketTransport`)."""
        self._read_holds: set[str] = set()
        self._pings = float(limits.MAX_CLIENT_PINGS)
        self._pinged_at = time.monotonic()
        """The client's ping bucket (SPEC §1.2.1): tokens, and when last refilled."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # websockets' assembler pauses reading when its queue is full; the relay also
        # pauses it for its outgoing data (hold_reading): reading resumes when neither holds.
        self.recv_messages.pause = partial(self.hold_reading, "assembler")
        self.recv_messages.resume = partial(self.release_reading, "assembler")

    def hold_reading(self, reason: str) -> None:
        """Stop reading from the socket until every ``reason`` is released."""
        if not self._read_holds:
            self.transport.pause_reading()
        self._read_holds.add(reason)

    def release_reading(self, reason: str) -> None:
        self._read_holds.discard(reason)
        if not self._read_holds:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.flow is not None:
            self.flow.writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.flow is not None:
            self.flow.writing_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.flow is not None:
            self.flow.connection_lost()

    def direct(self, on_message: Callable[[bytes], None]) -> bool:
        """Route messages to ``on_message`` unless some already went to the assembler."""
        if self._assembled:
            return False
        self.on_message = on_message
        return True

    def data_received(self, data: bytes) -> None:
        """Whole binary frames at the start of ``data`` go straight to ``on_message``
        (:func:`read_frames`); the rest goes to websockets.

        Why: a fan-out brings one small ACK frame per customer, and websockets'
        generator-based parser (buffer, three ``read_exact`` steps, a ``Frame``,
        an event) cost ~12 % of the relay's CPU.
        """
        on_message = self.on_message
        if on_message is not None and at_frame_boundary(self.protocol):
            taken = read_frames(self.protocol, data, on_message)
            if taken == len(data):
                return
            data = data[taken:]
        super().data_received(data)
        if self.flow is not None:
            # websockets answers a ping (and echoes a close) by writing to the transport
            # itself: data the relay holds like any answer, counted against the bound
            # (SPEC §1.2.4). Without this a client that never reads and sends pings made
            # the relay hold whatever it sent (tests/server/test_slow_readers.py).
            self.flow.written_outside()

    def _ping_allowed(self) -> bool:
        """Take a token for a client's ping; with none left, abort the connection
        (SPEC §1.2.1: no close frame, which would wait behind the pongs)."""
        now = time.monotonic()
        refill = (now - self._pinged_at) * limits.MAX_CLIENT_PINGS / limits.PING_INTERVAL_S
        self._pings = min(float(limits.MAX_CLIENT_PINGS), self._pings + refill)
        self._pinged_at = now
        if self._pings >= 1.0:
            self._pings -= 1.0
            return True
        if not self.transport.is_closing():
            peer = self.remote_address
            log_event(logging.WARNING, "ping_flood", peer=f"{peer[0]}:{peer[1]}" if peer else "?")
            self.transport.abort()
        return False

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame):
            if event.opcode is Opcode.PING and not self._ping_allowed():
                return
            on_message = self.on_message
            if on_message is not None and event.fin and event.opcode is Opcode.BINARY:
                data = event.data
                on_message(data if type(data) is bytes else bytes(data))
                return
            if event.opcode in DATA_OPCODES:
                self.on_message = None
                self._assembled += 1
        super().process_event(event)


FRAMES_PER_TURN = 256
"""Frames one connection has handled before the relay turns to the others for a
loop turn: a socket read brings up to 256 KiB, thousands of small frames, and a
client that floods (even with requests refused at once, ~25 µs each) would stall
everyone else for a read's worth. Lower is fairer, and costs a pause and a resume
of reading per that many frames."""


class Intake:
    """A connection's reading side: messages to the dispatcher, in order, at most
    :data:`FRAMES_PER_TURN` in a row, and none while held.

    Held (for a turn, SPEC §1.2.6, while the outgoing data is over its
    bound, §1.2.4, or while a store read is answered after a round trip, so
    frames reach the store in order, ``RelayContext.read``): the socket is not
    read, and what was already read waits here — at most the rest of one read —
    so nothing more is asked of the relay meanwhile. On the read fast path this
    costs a check and a count per frame.
    """

    def __init__(self, ws: RelayWebSocket, dispatch: Callable[[bytes | str], None]) -> None:
        self._ws = ws
        self._dispatch = dispatch
        self._held: deque[bytes | str] = deque()
        self._holds: set[str] = set()
        self._count = 0
        self._draining = False

    def received(self, message: bytes | str) -> None:
        if self._holds or self._held:
            self._held.append(message)
            return
        self._dispatch(message)
        self._count += 1
        if self._count >= FRAMES_PER_TURN:
            self._end_turn()

    def hold(self, reason: str) -> None:
        if not self._holds:
            self._ws.hold_reading("intake")
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        self._holds.discard(reason)
        if not self._holds and not self._draining:
            # In a loop callback of its own: releases come from inside asyncio's
            # write callbacks, where handling frames (which write) does not belong.
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _end_turn(self) -> None:
        self.hold("turn")
        asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._count = 0
        self._holds.discard("turn")
        if not self._holds:
            self._drain()

    def _drain(self) -> None:
        self._draining = False
        held = self._held
        while held and not self._holds:
            self._dispatch(held.popleft())
            self._count += 1
            if self._count >= FRAMES_PER_TURN:
                self._end_turn()
        if not self._holds and not held:
            self._ws.release_reading("intake")


class FlowListener(Interface):
    """What :class:`RelayWebSocket` tells about its transport's writing side."""

    def writing_paused(self) -> None: ...
    def writing_resumed(self) -> None: ...
    def written_outside(self) -> None: ...
    def connection_lost(self) -> None: ...
