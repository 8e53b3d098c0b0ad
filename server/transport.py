"""One WebSocket connection's writing side for the relay: frames out, then the close,
and the flow control that bounds what waits (SPEC §1.2.4–5).

Why a module of its own: :mod:`.relay` runs the server; :mod:`.intake` reads a
connection's frames; this writes its answers — sealed and written synchronously, once
per loop turn and connection (:class:`Flusher`), so handlers and store callbacks never
await, framed here (:func:`frame_head`) when websockets has nothing else queued. A pump
task exists only while the peer reads slowly or the connection closes. Past its bound a
connection's intake is held, and a peer that takes no data for the write timeout is
aborted; :class:`OutgoingStats` is the accounting.

Not here: protocol rules, sessions and what frames mean (``dispatch``, ``context``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import sys
import termios
from collections import deque
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState

from blindrelay.protocol.channel import RelayChannel
from blindrelay.protocol.connection import RelayConnection, State

from .config import TRANSPORT_WRITE_LIMIT_BYTES
from .context import Session
from .intake import Intake, RelayWebSocket
from .logs import log_event

CLOSE_POLICY = 1008

MIN_PROGRESS_BYTES = TRANSPORT_WRITE_LIMIT_BYTES // 4
"""What a peer must take from the relay within ``write_timeout_s`` to count as
reading (8 KiB per 20 s by default): one trickling a byte at a time is as stuck
as one that reads nothing, and holds its buffers as long."""


def unacknowledged_bytes(transport: asyncio.WriteTransport) -> int:
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


_SHORT_HEADS = [bytes((0x82, size)) for size in range(126)]


def frame_head(data: bytes) -> bytes:
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


class Flusher:
    """Writes out every transport that has frames queued, once per loop turn.

    Frames queued during one turn (one commit of the store answers many SENDs)
    leave in one socket write per connection instead of one per frame.
    """

    def __init__(self) -> None:
        self._due: list[WebSocketTransport] = []

    def add(self, transport: WebSocketTransport) -> None:
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
    """The most one connection held, as :attr:`WebSocketTransport.outgoing_bytes`
    counts it whenever it can have grown past asyncio's write limit."""
    reading_paused: int = 0
    """Times a connection's reading was paused because it passed the bound."""
    write_timeouts: int = 0
    """Connections aborted because their peer took less than :data:`MIN_PROGRESS_BYTES`
    in ``write_timeout_s``."""


class WebSocketTransport:
    """A session's writing side: frames go out in order, then the close.

    The fast path writes synchronously at the end of the loop turn
    (:class:`Flusher`): the frames leave in one ``transport.write``, framed
    here (:func:`frame_head`) when websockets' sans-I/O protocol has nothing else
    queued, else through it. A pump task exists only while it is
    needed — the peer reads slowly (websockets paused writing: the pump awaits
    ``send``, i.e. drain) or the connection is closing — so an idle
    connection holds no task.

    What waits is bounded (SPEC §1.2.4–5): :attr:`outgoing_bytes` is asyncio's
    write buffer plus the pump's backlog. Past ``bound`` the connection's
    :class:`Intake` is held — no new requests handled, so no new answers;
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
        ws: RelayWebSocket,
        conn: RelayConnection,
        channel: RelayChannel,
        flusher: Flusher,
        *,
        intake: Intake,
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
        self._queued = 0
        """Bytes in ``_out``: a page of DELIVERs is queued in one turn, before any flush."""
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
        return self._ws.transport.get_write_buffer_size() + self._held + self._queued

    @property
    def congested(self) -> bool:
        """Over the bound, until down to a quarter of it (SPEC §1.2.4): deliveries wait, as
        for a full window (``Outbox``), and are told when it ends (``Outbox.drained``)."""
        return self.reading_paused

    def flush(self) -> None:
        if not self._due:
            self._due = True
            self._flusher.add(self)

    def write(self, data: bytes) -> None:
        pending = self._conn.data_to_send()
        if pending:
            self._out.extend(pending)
        self._out.append(data)
        self._queued += len(data)
        if self._queued > self._resume_at and not self.reading_paused:
            self._check()  # a page of DELIVERs must not pass the bound before it is flushed
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
        """The connection's :class:`Intake`: its frames wait, its socket is not read."""
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
        self._queued = 0
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
        self._write_now()
        if self.reading_paused:
            self._check()  # what was queued may have gone to the kernel at once

    def _write_now(self) -> None:
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
            heads = [part for data in frames for part in (frame_head(data), data)]
            ws.transport.write(b"".join(heads))
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
                # Drained: asyncio said so (writing_resumed) while the backlog still held
                # more than a quarter of the bound, and says nothing more while its buffer
                # stays under its limit — without this the connection stayed held (T81).
                self._check()
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

    # --- flow control (asyncio's callbacks, through RelayWebSocket) ----------------

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
                session = self.session
                if session is not None and session.outbox is not None:
                    asyncio.get_running_loop().call_soon(session.outbox.drained)
        elif size > self._bound:
            self.reading_paused = True
            stats.reading_paused += 1
            self._intake.hold("outgoing")

    def written_outside(self) -> None:
        """websockets may have written on its own (a pong, a close's echo): recount."""
        self._check()

    def writing_paused(self) -> None:
        self._check()
        if self._stalled is None:
            self._arm()

    def _arm(self) -> None:
        self._stalled = asyncio.get_running_loop().call_later(
            self._write_timeout_s, self._write_timed_out, unacknowledged_bytes(self._ws.transport)
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
        if unacknowledged - unacknowledged_bytes(self._ws.transport) >= MIN_PROGRESS_BYTES:
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
