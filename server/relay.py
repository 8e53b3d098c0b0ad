"""The relay's I/O: the only module that imports websockets (SPEC §1).

It accepts WebSocket connections speaking the ``blindrelay.v2`` subprotocol
(anything else is refused at the handshake), answers the Noise handshake that
opens each one (SPEC §1.3, :class:`~blindrelay.protocol.channel.RelayChannel`),
opens every later message and feeds it to the session's sans-I/O machine
through the :class:`Dispatcher`, and writes out, sealed, what the machine
queued — synchronously, once per loop turn and connection
(:class:`_WebSocketTransport`), so handlers and store callbacks never await.
Compression is off (ciphertext does not compress; see
/work/shared/notes.md), ``max_size`` is the frame cap plus the Noise tag
(websockets closes bigger messages with 1009), keep-alive comes from the limits
table. A message that fails the channel closes the connection with 4001,
unanswered, and is counted (:attr:`RunningRelay.channel_failures`).

Flow control (SPEC §1.2.4–6): each connection's frames are handled a bounded
number at a time (:class:`_Intake`), none while the data waiting for it is over
its bound (nor while a store read it asked is unanswered), and a peer that
takes no data for the write timeout is aborted (:class:`_WebSocketTransport`);
:attr:`RunningRelay.outgoing` is the accounting.

:func:`serve` runs a relay in the current event loop and returns a
:class:`RunningRelay` with its URL, so tests and the CLI start it the same way.

Not here: protocol rules (everything else in ``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import sys
import termios
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import GeneratorType
from typing import Any, cast
from typing import Protocol as Interface

from nacl.signing import SigningKey
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Event, Protocol
from websockets.protocol import State as WsState
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension (what websockets.frames does)
    from websockets.utils import apply_mask

from blindrelay.protocol import SUBPROTOCOL, limits
from blindrelay.protocol.channel import (
    CLOSE_CHANNEL_FAILED,
    MAX_TRANSPORT_MESSAGE_BYTES,
    ChannelError,
    RelayChannel,
    relay_static_key,
    static_binding,
)
from blindrelay.protocol.connection import RelayConnection, State
from blindrelay.protocol.errors import StoreUnavailable
from blindrelay.protocol.noise import KeyPair
from blindrelay.protocol.transparency.bills import month_of

from . import auth, gcpolicy, transparency
from .config import TRANSPORT_WRITE_LIMIT_BYTES, RelayConfig
from .context import Limiters, RelayContext, Session
from .dispatch import Dispatcher
from .logs import log_event
from .metrics import PROBE_INTERVAL_S, QUEUE_COUNT_INTERVAL_S, MetricsServer, parse_listen
from .ratelimit import Clock, wall_clock_ms
from .registration import RegistrationPolicy, source_key
from .routing import Hint, InProcessRouter, Router, open_router
from .store import open_store
from .store.records import LogHead

Rng = Callable[[int], bytes]
SourceOf = Callable[[ServerConnection], str]
"""A connection → the key of its registration bucket (SPEC §4.6.1)."""

CLOSE_POLICY = 1008


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


class _RelayWebSocket(ServerConnection):
    """A websockets connection that hands each whole binary message straight to
    the session, inside ``data_received``.

    Why: websockets otherwise queues every message in its assembler and wakes
    the connection's handler task to ``recv`` it — a future and a task switch
    per frame, for a handler that never awaits. Whatever websockets does not
    deliver whole (text, fragments, anything before :meth:`direct`) goes to the
    assembler as usual, and from then on everything does, so order is kept.

    It also tells its :attr:`flow` when asyncio pauses and resumes writing, and
    pauses reading while anyone holds it (:meth:`hold_reading`): websockets'
    assembler when full, the relay's :class:`_Intake` when held.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_message: Callable[[bytes], None] | None = None
        self._assembled = 0
        self.flow: _FlowListener | None = None
        """Told when asyncio's transport pauses and resumes writing, and when the
        connection is lost (:class:`_WebSocketTransport`)."""
        self._read_holds: set[str] = set()

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

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame):
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


class _Intake:
    """A connection's reading side: messages to the dispatcher, in order, at most
    :data:`FRAMES_PER_TURN` in a row, and none while held.

    Held (for a turn, SPEC §1.2.6, while the outgoing data is over its
    bound, §1.2.4, or while a store read is answered after a round trip, so
    frames reach the store in order, ``RelayContext.read``): the socket is not
    read, and what was already read waits here — at most the rest of one read —
    so nothing more is asked of the relay meanwhile. On the read fast path this
    costs a check and a count per frame.
    """

    def __init__(self, ws: _RelayWebSocket, dispatch: Callable[[bytes | str], None]) -> None:
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


MIN_PROGRESS_BYTES = TRANSPORT_WRITE_LIMIT_BYTES // 4
"""What a peer must take from the relay within ``write_timeout_s`` to count as
reading (8 KiB per 20 s by default): one trickling a byte at a time is as stuck
as one that reads nothing, and holds its buffers as long."""


def _unacknowledged(transport: asyncio.WriteTransport) -> int:
    """Bytes written to ``transport`` that its peer has not acknowledged yet:
    asyncio's buffer plus the kernel's send queue (Linux ``SIOCOUTQ``; elsewhere
    asyncio's buffer alone)."""
    buffered = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is None or _OUTQ is None:
        return buffered
    try:
        queued = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
    except OSError:
        return buffered
    return buffered + int.from_bytes(queued, sys.byteorder, signed=True)


_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)
"""``ioctl`` request for a socket's unacknowledged send queue (SIOCOUTQ on Linux)."""


class _FlowListener(Interface):
    """What :class:`_RelayWebSocket` tells about its transport's writing side."""

    def writing_paused(self) -> None: ...
    def writing_resumed(self) -> None: ...
    def connection_lost(self) -> None: ...


_SHORT_HEADS = [bytes((0x82, size)) for size in range(126)]


def _head(data: bytes) -> bytes:
    """The head of a server's final, unmasked binary frame carrying ``data`` (RFC 6455 §5.2).

    Why here and not websockets' ``send_binary``: it builds a ``Frame`` and
    serializes it through a BytesIO for every DELIVER and SENT, measurably.
    tests/server/test_relay.py checks the bytes against websockets' own.
    """
    size = len(data)
    if size < 126:
        return _SHORT_HEADS[size]
    if size < 65536:
        return struct.pack("!BBH", 0x82, 126, size)
    return struct.pack("!BBQ", 0x82, 127, size)


class _Flusher:
    """Writes out every transport that has frames queued, once per loop turn.

    Frames queued during one turn (one commit of the store answers many SENDs)
    leave in one socket write per connection instead of one per frame.
    """

    def __init__(self) -> None:
        self._due: list[_WebSocketTransport] = []

    def add(self, transport: _WebSocketTransport) -> None:
        if not self._due:
            asyncio.get_running_loop().call_soon(self._run)
        self._due.append(transport)

    def _run(self) -> None:
        due, self._due = self._due, []
        for transport in due:
            transport.write_now()


@dataclass
class OutgoingStats:
    """The relay's own accounting of outgoing data, over all connections (SPEC §1.2)."""

    peak_bytes: int = 0
    """The most one connection held, as :attr:`_WebSocketTransport.outgoing_bytes`
    counts it whenever it can have grown past asyncio's write limit."""
    reading_paused: int = 0
    """Times a connection's reading was paused because it passed the bound."""
    write_timeouts: int = 0
    """Connections aborted because their peer took less than :data:`MIN_PROGRESS_BYTES`
    in ``write_timeout_s``."""


class _WebSocketTransport:
    """A session's writing side: frames go out in order, then the close.

    The fast path writes synchronously at the end of the loop turn
    (:class:`_Flusher`): the frames leave in one ``transport.write``, framed
    here (:func:`_head`) when websockets' sans-I/O protocol has nothing else
    queued, else through it. A pump task exists only while it is
    needed — the peer reads slowly (websockets paused writing: the pump awaits
    ``send``, i.e. drain) or the connection is closing — so an idle
    connection holds no task.

    What waits is bounded (SPEC §1.2.4–5): :attr:`outgoing_bytes` is asyncio's
    write buffer plus the pump's backlog. Past ``bound`` the connection's
    :class:`_Intake` is held — no new requests handled, so no new answers;
    deliveries are windowed — until it is down to a quarter of it. While
    asyncio has paused writing a timer runs, started again when the transport
    drains; when it fires without the peer having taken
    :data:`MIN_PROGRESS_BYTES`, the connection is aborted: a close frame could
    not pass the full buffer, and websockets' keep-alive ping waits behind it,
    so the ping timeout never starts. The write fast path is untouched:
    asyncio's pause and resume callbacks drive all of this.
    """

    def __init__(
        self,
        ws: _RelayWebSocket,
        conn: RelayConnection,
        channel: RelayChannel,
        flusher: _Flusher,
        *,
        intake: _Intake,
        bound: int,
        write_timeout_s: float,
        stats: OutgoingStats,
    ) -> None:
        self._ws = ws
        self._intake = intake
        self._conn = conn
        self.channel = channel
        self._reply: bytes | None = None
        """Handshake message 2, to go out first and unsealed (:meth:`handshake_answered`)."""
        self._flusher = flusher
        self._out: list[bytes] = []
        self._due = False
        self._pump: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.closing: tuple[int, str] | None = None
        self._backlog: deque[bytes] = deque()
        self._held = 0
        """Bytes in ``_backlog``."""
        self._bound = bound
        self._resume_at = bound // 4
        self._write_timeout_s = write_timeout_s
        self._stats = stats
        self._stalled: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.session: Session | None = None
        """For the log line of a write timeout."""

    @property
    def outgoing_bytes(self) -> int:
        """What the relay holds for this connection, not yet handed to the kernel."""
        return self._ws.transport.get_write_buffer_size() + self._held

    def flush(self) -> None:
        if not self._due:
            self._due = True
            self._flusher.add(self)

    def write(self, data: bytes) -> None:
        pending = self._conn.data_to_send()
        if pending:
            self._out.extend(pending)
        self._out.append(data)
        self.flush()

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
        self.flush()

    def handshake_answered(self, reply: bytes) -> None:
        """The channel is established: ``reply`` goes out, then HELLO and the rest, sealed."""
        self._reply = reply
        self.flush()

    def hold(self, reason: str) -> None:
        """The connection's :class:`_Intake`: its frames wait, its socket is not read."""
        self._intake.hold(reason)

    def release(self, reason: str) -> None:
        self._intake.release(reason)

    def _take(self) -> list[bytes]:
        """What goes out now, in order, each frame sealed by the channel (SPEC §1.3.4).

        Frames are sealed here, when they leave, so the nonces follow the order on
        the wire whichever path queued them. Before the handshake nothing leaves:
        HELLO waits in the machine, and a connection closed meanwhile (the
        authentication timeout, a shutdown) closes without a frame.
        """
        conn = self._conn
        if not self.channel.established:
            if conn.state is State.CLOSED:
                conn.data_to_send()
                if self.closing is None:
                    self.closing = (CLOSE_POLICY, "protocol error")
            return []
        frames, self._out = self._out, []
        pending = conn.data_to_send()
        if pending:
            frames.extend(pending)
        encrypt = self.channel.encrypt
        out = [encrypt(data) for data in frames]
        if self._reply is not None:
            out.insert(0, self._reply)
            self._reply = None
        if self.closing is None and conn.state is State.CLOSED:
            self.closing = (CLOSE_POLICY, "protocol error")
        return out

    def _hold(self, frames: list[bytes]) -> None:
        """Queue ``frames`` for the pump, counted."""
        if frames:
            self._backlog.extend(frames)
            self._held += sum(map(len, frames))
        self._check()

    def write_now(self) -> None:
        self._due = False
        if self._pump is not None:
            assert self._wake is not None
            self._hold(self._take())
            self._wake.set()
            return
        ws = self._ws
        if self.closing is not None or ws.paused or ws.protocol.state is not WsState.OPEN:
            self._hold(self._take())
            self.start_pump()
            return
        frames = self._take()
        if self.closing is not None:
            self._hold(frames)
            self.start_pump()
            return
        if not frames:
            return
        protocol = ws.protocol
        if not (protocol.writes or protocol.extensions or protocol.expect_continuation_frame):
            # Nothing else queued, no extension, not mid-message: what send_binary would
            # produce is the frame head and the payload (server frames are not masked).
            ws.transport.write(b"".join([part for data in frames for part in (_head(data), data)]))
            return
        for data in frames:
            protocol.send_binary(data)
        chunks = protocol.data_to_send()
        if all(chunks):
            ws.transport.write(b"".join(chunks))
        else:  # a half-close is queued (never after send_binary alone); let websockets do it
            for chunk in chunks:
                if chunk:
                    ws.transport.write(chunk)
            ws.send_data()

    def start_pump(self) -> asyncio.Task[None]:
        """The task that awaits: for flow control, and to close with our code."""
        if self._pump is None:
            self._wake = asyncio.Event()
            self._pump = asyncio.create_task(self._run_pump())
        return self._pump

    async def _run_pump(self) -> None:
        assert self._wake is not None
        backlog = self._backlog
        try:
            while True:
                self._hold(self._take())
                while backlog:
                    data = backlog.popleft()
                    self._held -= len(data)
                    await self._ws.send(data)
                if self.closing is not None:
                    await self._ws.close(*self.closing)
                    return
                if not self._ws.paused:
                    return  # back to the fast path
                await self._wake.wait()
                self._wake.clear()
        except ConnectionClosed:
            return
        finally:
            self._pump = None

    # --- flow control (asyncio's callbacks, through _RelayWebSocket) ----------------

    def _check(self) -> None:
        """Pause or resume reading by the outgoing data (SPEC §1.2.4)."""
        # "When what the relay holds for a connection and has not yet handed to the
        # network exceeds MAX_OUTGOING_BUFFER_BYTES …, the relay MUST stop handling that
        # connection's frames — those already received included — and stop reading its
        # socket, until that data is down to a quarter of the bound."
        size = self.outgoing_bytes
        stats = self._stats
        if size > stats.peak_bytes:
            stats.peak_bytes = size
        if self.reading_paused:
            if size <= self._resume_at:
                self.reading_paused = False
                self._intake.release("outgoing")
        elif size > self._bound:
            self.reading_paused = True
            stats.reading_paused += 1
            self._intake.hold("outgoing")

    def writing_paused(self) -> None:
        self._check()
        if self._stalled is None:
            self._arm()

    def _arm(self) -> None:
        self._stalled = asyncio.get_running_loop().call_later(
            self._write_timeout_s, self._write_timed_out, _unacknowledged(self._ws.transport)
        )

    def writing_resumed(self) -> None:
        """The peer took data: the write timeout starts again at the next pause."""
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self._check()

    def connection_lost(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _write_timed_out(self, unacknowledged: int) -> None:
        """Abort the connection unless the peer took data since the timer started
        (SPEC §1.2.5).

        asyncio tells of progress only when its buffer is down to a quarter of
        its write limit, and the kernel's send buffer (megabytes) drains first:
        an honest slow reader can take far longer than the timeout to get there.
        So what the peer has not acknowledged is measured too; down by
        :data:`MIN_PROGRESS_BYTES` since the timer started counts as progress.
        """
        # "So the relay MUST close a connection whose peer, while such data waits,
        # takes less than 8 KiB of it in WRITE_TIMEOUT_S."
        self._stalled = None
        if unacknowledged - _unacknowledged(self._ws.transport) >= MIN_PROGRESS_BYTES:
            self._arm()
            return
        self._stats.write_timeouts += 1
        session = self.session
        log_event(
            logging.WARNING, "write_timeout", handle=session.handle if session else None,
            peer=session.peer if session else None, outgoing=self.outgoing_bytes,
        )  # fmt: skip
        self._ws.transport.abort()

    def cancel(self) -> None:
        self.connection_lost()
        if self._pump is not None:
            self._pump.cancel()


class RunningRelay:
    """A relay serving in this event loop; ``await close()`` stops it cleanly."""

    def __init__(
        self,
        config: RelayConfig,
        ctx: RelayContext,
        rng: Rng,
        source_of: SourceOf,
        router: Router | None = None,
        sign: Callable[[bytes], bytes] | None = None,
        *,
        static_key: KeyPair,
        static_binding: bytes,
    ) -> None:
        self.config = config
        self._sign = sign
        """The relay key's signature, for tree heads (SPEC §15.3); None: none published."""
        self.ctx = ctx
        self._static_key = static_key
        self._static_binding = static_binding
        """The Noise static key and its binding to the relay key (SPEC §1.3.2)."""
        self.channel_failures = 0
        """Connections closed because a handshake or transport message failed (§1.3.6)."""
        self.router: Router = router or InProcessRouter(ctx.worker_id)
        """How this relay hears what other workers sharing its store committed."""
        self.relay_key = ctx.relay_key
        self.dispatcher = Dispatcher(ctx)
        self._rng = rng
        self._source_of = source_of
        self._server: Server | None = None
        self._sessions: set[Session] = set()
        self._purger: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._counts_started = 0
        self._count_kept = 0
        """The queue counts started, and the latest of them whose result is kept."""
        self.metrics_server: MetricsServer | None = None
        """``/healthz``, ``/readyz``, ``/metrics`` (``--metrics-listen``); None when off."""
        self._flusher = _Flusher()
        self.outgoing = OutgoingStats()
        self._closed = gcpolicy.ClosedConnections()
        self._collection: asyncio.TimerHandle | None = None
        self.failed = asyncio.Event()
        """Set when the store was lost under the relay (:attr:`failure` says how): nothing
        can be stored any more, so the CLI stops (a supervisor restarts it; what was
        committed is intact)."""
        self.failure = ""
        self.url = ""

    async def _listen(self) -> None:
        self._server = await websockets_serve(
            self._connection,
            self.config.host,
            self.config.port,
            reuse_port=self.config.reuse_port or None,  # to loop.create_server
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            compression=None,
            max_size=MAX_TRANSPORT_MESSAGE_BYTES,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            server_header=None,
            create_connection=_RelayWebSocket,
            write_limit=TRANSPORT_WRITE_LIMIT_BYTES,
        )
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        self.url = f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"
        self._purger = asyncio.create_task(self._purge_periodically())
        metrics = self.ctx.metrics
        metrics.connections = lambda: len(self._sessions)
        metrics.authenticated = lambda: len(self.ctx.sessions)
        self._prober = asyncio.create_task(self._probe_store_periodically())
        listen = parse_listen(self.config.metrics_listen)
        if listen is not None:
            self.metrics_server = MetricsServer(metrics, *listen)
        self._checkpointer = asyncio.create_task(self._checkpoint_periodically())
        if self._sign is not None:
            self._publisher = asyncio.create_task(self._publish_periodically())

    async def _connection(self, ws: ServerConnection) -> None:
        # "The relay MUST refuse a handshake without the blindrelay.v2 subprotocol":
        # websockets answers 400 when no offered subprotocol matches ours.
        assert isinstance(ws, _RelayWebSocket)  # create_connection
        registration = self.ctx.registration
        conn = RelayConnection(
            self.relay_key, self.ctx.clock(), self._rng, registration.proof_of_work
        )
        peer = ws.remote_address
        name = f"{peer[0]}:{peer[1]}" if peer else "?"
        channel = RelayChannel(self._static_key, self._static_binding, self._rng)
        session: Session
        intake = _Intake(ws, lambda message: self._received(session, transport, message))
        transport = _WebSocketTransport(
            ws, conn, channel, self._flusher, intake=intake,
            bound=self.config.max_outgoing_buffer_bytes,
            write_timeout_s=self.config.write_timeout_s, stats=self.outgoing,
        )  # fmt: skip
        ws.flow = transport
        session = Session(
            conn, transport, peer=name, source=self._source_of(ws), clock=self.ctx.clock,
            on_sent=self.ctx.metrics.frame_sent,
        )
        transport.session = session
        self._sessions.add(session)
        timer = asyncio.get_running_loop().call_later(
            registration.auth_timeout_s, self.dispatcher.auth_expired, session
        )
        log_event(logging.INFO, "connected", peer=session.peer)
        transport.flush()
        ws.direct(intake.received)
        try:
            async for message in ws:  # only what websockets' assembler got
                intake.received(message)
                if not session.open:
                    break
        except ConnectionClosed as exc:
            log_event(logging.INFO, "connection_closed", peer=session.peer, code=_code(exc))
        finally:
            timer.cancel()
            self.dispatcher.session_ended(session)
            self._sessions.discard(session)
            if self._closed.closed(still_open=len(self._sessions)):
                self._collect_soon()
            if transport.closing is not None or conn.state is State.CLOSED:
                await transport.start_pump()  # flush the last frames and close with our code
            else:
                transport.cancel()

    def lost(self, failure: str) -> None:
        """The store went away under the relay (:attr:`failed`)."""
        self.failure = failure
        self.ctx.metrics.store_failed(failure)
        self.failed.set()

    def store_available(self, available: bool) -> None:
        """A shared store lost or regained its connection (it reconnects by itself and
        logs both; meanwhile every operation fails with 902, SPEC §6.3). Once it is
        back, what other workers committed meanwhile was announced to nobody here."""
        if available:
            self.catch_up("store")
        else:
            self.ctx.metrics.store_failed("unavailable, reconnecting")

    def hint_received(self, hint: Hint) -> None:
        """What another worker committed that a session here must act on (the router's
        callback)."""
        if self.ctx.stopping:
            return
        try:
            self.dispatcher.hint_received(hint)
        except Exception as exc:  # inside the router's callback: never let it escape
            log_event(logging.ERROR, "hint_failed", kind=hint.kind.name,
                      exc_type=type(exc).__name__)  # fmt: skip

    def catch_up(self, reason: str = "router") -> None:
        """Hints may have been lost: every outbox pages its queue again (the router's
        callback on every connection, and :meth:`store_available`)."""
        if self.ctx.stopping:
            return
        sessions = len(self.ctx.sessions.all())
        if sessions:
            log_event(logging.INFO, "catch_up", reason=reason, sessions=sessions)
        self.dispatcher.catch_up()

    def _collect_soon(self) -> None:
        """Closed connections are cyclic garbage only a full collection frees (gcpolicy)."""
        if self._collection is None and not self.ctx.stopping:
            self._collection = asyncio.get_running_loop().call_later(
                gcpolicy.COLLECT_DELAY_S, self._collect
            )

    def _collect(self) -> None:
        self._collection = None
        gcpolicy.collect_closed()

    def _received(
        self, session: Session, transport: _WebSocketTransport, message: bytes | str
    ) -> None:
        """One WebSocket message: the handshake's first, then sealed frames (SPEC §1.3)."""
        if not session.open:
            return
        channel = transport.channel
        try:
            if not channel.established:
                reply = channel.receive_handshake(message)
                assert channel.handshake_hash is not None
                session.conn.bind_channel(channel.handshake_hash)
                transport.handshake_answered(reply)
                return
            data = channel.decrypt(message)
        except ChannelError as exc:
            self._channel_failed(session, transport, exc)
            return
        try:
            self.dispatcher.data_received(session, data)
        except Exception as exc:  # inside websockets' data_received: never let it escape
            self.ctx.refuse(session, None, exc)

    def _channel_failed(
        self, session: Session, transport: _WebSocketTransport, exc: ChannelError
    ) -> None:
        """SPEC §1.3.6: "a message that fails [...] closes the connection with 4001; it
        is counted and not answered"."""
        self.channel_failures += 1
        log_event(logging.INFO, "channel_failed", handle=session.handle, peer=session.peer,
                  reason=type(exc).__name__)  # fmt: skip
        session.conn.close()
        transport.close(CLOSE_CHANNEL_FAILED, "channel failed")

    async def purge_expired(self) -> tuple[int, int]:
        """SPEC §6.6: drop envelopes and remembered msg_ids older than the queue TTL."""
        before = self.ctx.clock() - self.config.queue_ttl_ms
        envelopes, ids = await self.ctx.store.submit("purge", before, self.ctx.clock())
        if envelopes or ids:
            log_event(logging.INFO, "purged", envelopes=envelopes, msg_ids=ids)
        return envelopes, ids

    async def _purge_periodically(self) -> None:
        while True:
            try:
                await self.purge_expired()
            except Exception as exc:  # e.g. the store is lost; the relay is stopping anyway
                log_event(logging.ERROR, "purge_failed", exc_type=type(exc).__name__)
            await asyncio.sleep(self.config.purge_interval_s)

    async def checkpoint(self) -> None:
        """SPEC §11.2: the WAL folded into the database and truncated, once every
        job submitted before has committed (deleted envelopes leave the WAL)."""
        await self.ctx.store.submit("checkpoint")

    async def _checkpoint_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval_s)
            try:
                await self.checkpoint()
            except Exception as exc:  # e.g. the store is lost; the relay is stopping anyway
                log_event(logging.ERROR, "checkpoint_failed", exc_type=type(exc).__name__)

    async def publish_tree_head(self) -> LogHead | None:
        """SPEC §15.3: sign a head of the transparency log if it grew since the newest."""
        assert self._sign is not None, "this relay signs no tree heads"
        return await transparency.publish_tree_head(self.ctx.store, self._sign, self.ctx.clock)

    async def close_bills(self) -> list[list[Any]]:
        """SPEC §8.5: close every open bill of a month that ended ``BILL_CLOSE_DELAY_MS``
        ago or more, a chunk of items per store operation, logging each; the bills
        closed, as ``close_bills`` gives them."""
        before = month_of(self.ctx.clock() - limits.BILL_CLOSE_DELAY_MS)
        closed: list[list[Any]] = []
        more = True
        while more:
            done, more = await self.ctx.store.submit("close_bills", before, self.ctx.clock())
            for business, month, count, index in done:
                if index is None:  # metered after its bill closed: see close_bills
                    log_event(logging.ERROR, "bill_items_late", business=business, month=month,
                              items=count)  # fmt: skip
                else:
                    log_event(logging.INFO, "bill_closed", business=business, month=month,
                              items=count)  # fmt: skip
            closed += done
        return closed

    async def _publish_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.sth_interval_s)
            try:
                await self.close_bills()  # logged before the head that covers them
            except Exception as exc:  # a bill that cannot close must not stop the heads
                log_event(logging.ERROR, "bills_failed", exc_type=type(exc).__name__)
            try:
                await self.publish_tree_head()
            except Exception as exc:  # e.g. the store is lost; the next interval retries
                log_event(logging.ERROR, "tree_head_failed", exc_type=type(exc).__name__)

    async def probe_store(self) -> bool:
        """One store round trip (``noop``: answered once what came before it committed):
        what ``/readyz`` says ready on."""
        metrics = self.ctx.metrics
        started = metrics.now()
        try:
            await self.ctx.store.submit("noop")
        except Exception as exc:  # a store outage or a lost store: not ready
            metrics.store_failed(type(exc).__name__)
            return False
        metrics.committed(metrics.now() - started)
        return True

    async def count_queued(self) -> None:
        """The ``envelopes_queued`` gauge; left as it was while the store cannot count.
        Of two counts that overlap, the one started later is kept, whichever ends last."""
        self._counts_started += 1
        started = self._counts_started
        try:
            queued = await self.ctx.store.queued_total()
        except Exception as exc:  # an outage: /readyz says so; the gauge waits for the next
            log_event(logging.WARNING, "queue_count_failed", exc_type=type(exc).__name__)
            return
        if started > self._count_kept:
            self._count_kept = started
            self.ctx.metrics.queued = queued

    async def _probe_store_periodically(self) -> None:
        counted = -QUEUE_COUNT_INTERVAL_S
        loop = asyncio.get_running_loop()
        while True:
            await self.probe_store()
            if loop.time() - counted >= QUEUE_COUNT_INTERVAL_S:
                counted = loop.time()
                await self.count_queued()
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def close(self) -> None:
        """Stop accepting, finish in-flight commits (their SENTs go out), then close.

        Frames that arrive meanwhile are refused with SHUTTING_DOWN, so every
        SEND either got its SENT or must be resent by the client.
        """
        self.ctx.stopping = True
        await self.router.close()
        if self._collection is not None:
            self._collection.cancel()
        if self.metrics_server is not None:
            self.metrics_server.close()
        for task in (self._purger, self._checkpointer, self._publisher, self._prober):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            self._server.close(close_connections=False)
        if self.ctx.store.running:
            for session in list(self._sessions):  # their accounts' next relay starts from now
                auth.close_session(self.ctx, session)
            try:
                await self.ctx.store.submit("noop")  # every earlier operation committed
            except StoreUnavailable:  # stopping during a store outage: nothing more to wait for
                log_event(logging.WARNING, "stopped_during_store_outage")
        for session in list(self._sessions):
            session.shut_down()
        if self._server is not None:
            await self._server.wait_closed()
        await self.ctx.store.close()
        self.ctx.registration.close()
        log_event(logging.INFO, "stopped")


def _code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None


def peer_source(ws: ServerConnection) -> str:
    """The registration bucket of a connection: its peer's address (SPEC §4.6.1).

    Behind a reverse proxy every peer is the proxy, and the limit then counts all
    registrations together: raise it, or let the relay see the clients' addresses.
    """
    peer = ws.remote_address
    return source_key(str(peer[0])) if peer else "?"


async def serve(
    config: RelayConfig,
    *,
    clock: Clock | None = None,
    rng: Rng | None = None,
    source_of: SourceOf = peer_source,
) -> RunningRelay:
    """Open the store, load or create the relay key, and start listening.

    ``clock``, ``rng`` and ``source_of`` are injected by tests; ``source_of``
    lets a test give connections from 127.0.0.1 other source addresses.
    """
    clock = clock or wall_clock_ms
    rng = rng or os.urandom
    store = open_store(config.store_url, config)
    await store.start()
    now = clock()

    try:
        seed = await store.submit("relay_seed")
        if seed is None:
            new_seed = rng(32)
            public = bytes(SigningKey(new_seed).verify_key)
            seed = await store.submit("create_relay_seed", new_seed, public, now)
    except BaseException:
        await store.close()
        raise
    relay_signing_key = SigningKey(seed)
    ctx = RelayContext(
        config=config,
        clock=clock,
        relay_key=bytes(relay_signing_key.verify_key),
        store=store,
        limiters=Limiters.from_config(config, clock),
        registration=RegistrationPolicy(config, clock),
        worker_id=store.origin,  # one id for this process: in its hints and its sessions
    )
    router = open_router(config.store_url, store.origin, ctx.sessions.serves, config.peer_links)
    static_key = relay_static_key(seed)
    relay = RunningRelay(
        config, ctx, rng, source_of, router,
        sign=lambda message: relay_signing_key.sign(message).signature,
        static_key=static_key,
        static_binding=static_binding(relay_signing_key, static_key.public),
    )  # fmt: skip
    store.on_lost = relay.lost
    store.on_available = relay.store_available
    store.on_batch = ctx.metrics.batch_committed
    store.on_decided = ctx.metrics.decided
    store.links = router.envelope_links
    try:
        # Hearing other workers' hints before the first connection is accepted.
        await relay.router.start(relay.hint_received, relay.catch_up)
        await relay._listen()
    except BaseException:
        await relay.router.close()
        await store.close()
        raise
    log_event(logging.INFO, "listening", url=relay.url, store=store.location,
              worker=store.origin)  # fmt: skip
    return relay
