"""One WebSocket connection to the relay: the protocol machine, its writer, its reader.

A :class:`Connection` drives the sans-I/O :class:`ClientConnection` over one
:class:`WebSocketTransport`: a pump task writes what was queued, in order; the
reader (:meth:`Connection.read`, run by the link) feeds every message to the
machine and dispatches the frames. Requests wait on futures keyed by request
id; the answer to a SEND goes to the outbox by msg_id (``send_answered``);
what the relay sends unasked — DELIVER, PREKEYS_LOW — goes to the
:class:`FrameHandlers` the link was given. An ERROR answering a request
becomes the named exception of :mod:`blindrelay.protocol.errors` (SPEC §9).

Not here: reconnecting, logging in and being online (``link``), what the
frames mean to the account (``inbox``, ``outbox``), the socket (``transport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blindrelay.protocol import frames
from blindrelay.protocol.connection import ClientConnection, State
from blindrelay.protocol.errors import (
    ProtocolError,
    UnexpectedFrame,
    UnsupportedVersion,
    error_for_code,
)
from blindrelay.protocol.fastcodec import read_sent

from .transport import ConnectionLost, WebSocketTransport

log = logging.getLogger("blindrelay.client")

DRAIN_TIMEOUT_S = 5.0
"""How long ``close`` waits to write out queued frames (acks, sends) before closing."""


@dataclass(frozen=True, slots=True)
class FrameHandlers:
    """Where a connection hands what is not the answer to a request awaited here."""

    deliver_received: Callable[[Connection, frames.Deliver], None]
    """A DELIVER: persist (or hold), then acknowledge on that connection (SPEC §6.5)."""
    prekeys_low: Callable[[Connection, int], None]
    """PREKEYS_LOW with the relay's remaining count (SPEC §5.4)."""
    send_answered: Callable[[bytes, int | None, ProtocolError | None], None]
    """The answer to a SEND by its msg_id: SENT's ``at``, or the relay's error (SPEC §6.3)."""


class Connection:
    """One WebSocket connection: the protocol machine, its writer, its waiting requests."""

    def __init__(
        self, transport: WebSocketTransport, handlers: FrameHandlers, *, clock: Callable[[], int]
    ) -> None:
        self.transport = transport
        # Proofs are signed over this channel, and HELLO must name its relay key (SPEC §1.3).
        self.machine = ClientConnection(transport.handshake_hash, transport.relay_key)
        self.hello: asyncio.Future[frames.Hello] = asyncio.get_running_loop().create_future()
        self.clock_offset = 0
        """Relay clock minus ours at HELLO (SPEC §4.1), for dating statements."""
        self.lost = False
        self._handlers = handlers
        self._clock = clock
        self._waiters: dict[int, asyncio.Future[frames.Frame]] = {}
        self._sending: dict[int, bytes] = {}
        """SEND request id → msg_id, for SENTs and ERRORs answering a send."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._pump = asyncio.create_task(self._write())

    @property
    def relay_key(self) -> bytes:
        """The key the relay presented in HELLO (call once HELLO has arrived)."""
        hello = self.machine.hello
        assert hello is not None
        return hello.relay_key

    @property
    def authenticated(self) -> bool:
        return self.machine.state is State.AUTHENTICATED

    @property
    def closing(self) -> bool:
        """The relay closed the connection (a closing ERROR, SPEC §9) and its socket has
        not ended yet (then :attr:`lost`): nothing more can be sent on it."""
        return self.machine.state is State.CLOSED

    def next_request_id(self) -> int:
        return self.machine.next_request_id()

    # --- Writing --------------------------------------------------------------

    def send(self, frame: frames.Frame) -> None:
        """Queue ``frame``; nothing while :attr:`closing` — an ACK not sent is delivered
        again, a request's future fails with ConnectionLost when the socket ends (and the
        link asks again), a SEND stays in the outbox for the next connection."""
        if self.closing:
            return
        self.machine.send(frame)
        self._wake.set()

    def request(self, frame: frames.Frame) -> asyncio.Future[frames.Frame]:
        """Send a request; the future gets its response, or the named error."""
        future = asyncio.get_running_loop().create_future()
        self._waiters[frame.id] = future  # type: ignore[union-attr]
        self.send(frame)
        return future

    def answer_to(self, request_id: int) -> asyncio.Future[frames.Frame]:
        """The answer to a request the caller queued on the machine itself (REGISTER,
        LOGIN); wakes the writer to send it."""
        future = self._waiters[request_id] = asyncio.get_running_loop().create_future()
        self._wake.set()
        return future

    def send_message(self, msg_id: bytes, request_id: int, send: bytes | frames.Send) -> None:
        """Send the SEND of ``msg_id``; its answer goes to ``send_answered``.

        ``send`` is the frame, or, while authenticated, its bytes from
        :func:`blindrelay.protocol.fastcodec.encode_send`.
        """
        self._sending[request_id] = msg_id
        if self.closing:
            return  # the outbox keeps it: sent again on the next connection
        if not isinstance(send, bytes):
            self.send(send)
            return
        self.machine.send_encoded(request_id, frames.FrameType.SEND, send)
        self._wake.set()

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionLost):
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._idle.clear()
                # Everything goes through the machine's queue, in the order it was sent.
                for data in self.machine.data_to_send():
                    await self.transport.send(data)
                if not self._wake.is_set():
                    self._idle.set()

    async def drain(self) -> None:
        """Wait until every queued frame is written (or the writer has stopped)."""
        self._idle.clear()
        self._wake.set()
        idle = asyncio.create_task(self._idle.wait())
        await asyncio.wait(
            [idle, self._pump], timeout=DRAIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        idle.cancel()

    def fail(self, exc: BaseException) -> None:
        """The connection is gone: every waiting request fails with ``exc``."""
        self.lost = True
        self._pump.cancel()
        futures: list[asyncio.Future[Any]] = [self.hello, *self._waiters.values()]
        for future in futures:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: nobody may be waiting any more
        self._waiters.clear()

    # --- Reading (SPEC §6.4, §6.5) ----------------------------------------------

    async def read(self) -> None:
        """Feed the machine every message until the connection ends (ConnectionLost)."""
        while True:
            data = await self.transport.recv()
            if self._sent_received(data):
                continue
            was_authenticated = self.authenticated
            try:
                self.machine.receive_data(data)
            except UnsupportedVersion:
                raise
            except ProtocolError as exc:
                raise ConnectionLost(f"relay sent an invalid frame: {exc}") from exc
            for frame in self.machine.events_received():
                self._frame_received(frame)
                if self.closing and (was_authenticated or getattr(frame, "re", None) is None):
                    # SPEC §9: the relay closes the connection after an ERROR that closes
                    # it. One that leaves it open kept us "online" on a connection nothing
                    # is sent on, for ever (T55): we end it. (Before WELCOME, the one
                    # answering our login ends it there: ``RelayLink.authenticate``.)
                    code = getattr(frame, "code", None)
                    raise ConnectionLost(f"the relay closed the connection: ERROR {code}")

    def _frame_received(self, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Hello):
            self.clock_offset = frame.now - self._clock()
            self.hello.set_result(frame)
        elif isinstance(frame, frames.Deliver):
            self._handlers.deliver_received(self, frame)
        elif isinstance(frame, frames.PrekeysLow):
            self._handlers.prekeys_low(self, frame.remaining)
        elif isinstance(frame, frames.Error) and frame.re is None:
            log.warning("relay error %d", frame.code)
        else:
            self._response_received(frame)

    def _response_received(self, frame: frames.Frame) -> None:
        re: int = frame.re  # type: ignore[union-attr, assignment]
        error = _error_from(frame) if isinstance(frame, frames.Error) else None
        msg_id = self._sending.pop(re, None)
        if msg_id is not None:
            if error is None and not isinstance(frame, frames.Sent):
                error = UnexpectedFrame(f"relay answered a SEND with {frame.TYPE.name}")
            at = frame.at if isinstance(frame, frames.Sent) else None
            self._handlers.send_answered(msg_id, at, error)
            return
        future = self._waiters.pop(re, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(frame)

    def _sent_received(self, data: bytes) -> bool:
        """A SENT answering one of our SENDs, taken on the fast path (:func:`read_sent`).

        Does what ``receive_data`` and :meth:`_response_received` do with the
        same frame: the request stops pending and the send is answered. False
        (nothing done) for anything else, which the strict path then decodes.
        """
        sent = read_sent(data)
        if sent is None or sent.re not in self._sending or not self.machine.receive_sent(sent):
            return False
        self._handlers.send_answered(self._sending.pop(sent.re), sent.at, None)
        return True


def _error_from(frame: frames.Error) -> ProtocolError:
    """The named exception for a relay ERROR (SPEC §9; unknown codes are 900, §12.3)."""
    return error_for_code(frame.code, frame.reason or "", frame.retry_after)


__all__ = ["DRAIN_TIMEOUT_S", "Connection", "FrameHandlers"]
