"""One WebSocket connection to the relay: the protocol machine, its writer, its reader.

A :class:`Connection` drives the sans-I/O :class:`ClientConnection` over one
:class:`WebSocketTransport`: a pump task writes what was queued, in order; the
reader (:meth:`Connection.read`, run by the link) feeds every message to the
machine and dispatches the frames; a watch ends the connection when the relay
leaves a request unanswered too long (:class:`NoAnswer`). Requests wait on
futures keyed by request id; the answer to a SEND goes to the outbox by msg_id
(``send_answered``); what the relay sends unasked — DELIVER, PREKEYS_LOW — goes to the
:class:`FrameHandlers` the link was given. An ERROR answering a request
becomes the named exception of :mod:`blindrelay.protocol.errors` (SPEC §9).

Not here: reconnecting, logging in and being online (``link``), what the
frames mean to the account (``inbox``, ``outbox``), the socket (``transport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from blindrelay.protocol import frames
from blindrelay.protocol.connection import ClientConnection, State
from blindrelay.protocol.errors import (
    ProtocolError,
    UnsupportedVersion,
    error_for_code,
)
from blindrelay.protocol.fastcodec import read_sent

from .transport import ConnectionLost, WebSocketTransport

log = logging.getLogger("blindrelay.client")

DRAIN_TIMEOUT_S = 5.0
"""How long ``close`` waits to write out queued frames (acks, sends) before closing."""
ANSWER_TIMEOUT_S = 60.0
"""How long the oldest unanswered request may wait for its answer before the connection
is given up (:class:`NoAnswer`, T55). An honest relay answers in milliseconds, a loaded
one within seconds (a SEND waits for its commit; a 402 or 902 is an answer too); the
clock of a request starts only once the requests sent before it are answered, so a
long queue of SENDs resent after a reconnect is never cut short while answers come."""


class NoAnswer(ConnectionLost):
    """The relay left a request unanswered for ``ANSWER_TIMEOUT_S`` (SPEC §9, T55).

    Raised on the connection it was asked on, which is then dropped: the link connects
    again and asks again (:meth:`.link.RelayLink.request`); raised to the caller only
    once ``MAX_UNANSWERED`` connections ended with it unanswered — left unanswered, or
    closed under it (T56): counted together, or a relay could alternate the two for ever."""


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
        self,
        transport: WebSocketTransport,
        handlers: FrameHandlers,
        *,
        clock: Callable[[], int],
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
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
        self._answer_timeout_s = answer_timeout_s
        self._asked: dict[int, float] = {}
        """Every unanswered request id (SENDs, REGISTER and LOGIN included) → when it was
        asked (``time.monotonic``), oldest first: what :meth:`_watch` holds the relay to."""
        self._head_since = 0.0
        """When the oldest unanswered request became the oldest."""
        self._no_answer: NoAnswer | None = None
        self._overdue: set[int] = set()
        """The requests :meth:`_watch` found unanswered too long: they fail with it."""
        self._again: set[int] = set()
        """The unanswered requests that an earlier connection ended under (:attr:`lost_again`)."""
        self._asking = asyncio.Event()
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

    @property
    def lost_again(self) -> bool:
        """A request asked again here, after an earlier connection ended under it, is still
        unanswered: if this connection ends now, the relay ended two under it (T56)."""
        return bool(self._again)

    # --- Writing --------------------------------------------------------------

    def send(self, frame: frames.Frame) -> None:
        """Queue ``frame``; nothing while :attr:`closing` — an ACK not sent is delivered
        again, a request's future fails with ConnectionLost when the socket ends (and the
        link asks again), a SEND stays in the outbox for the next connection."""
        if self.closing:
            return
        self.machine.send(frame)
        self._wake.set()

    def request(self, frame: frames.Frame, *, again: bool = False) -> asyncio.Future[frames.Frame]:
        """Send a request (``again``: asked before, on a connection that ended under it);
        the future gets its response, or the named error."""
        future = asyncio.get_running_loop().create_future()
        self._waiters[frame.id] = future  # type: ignore[union-attr]
        self._ask(frame.id, again)  # type: ignore[union-attr]
        self.send(frame)
        return future

    def answer_to(self, request_id: int) -> asyncio.Future[frames.Frame]:
        """The answer to a request the caller queued on the machine itself (REGISTER,
        LOGIN); wakes the writer to send it."""
        future = self._waiters[request_id] = asyncio.get_running_loop().create_future()
        self._ask(request_id)
        self._wake.set()
        return future

    def send_message(
        self, msg_id: bytes, request_id: int, send: bytes | frames.Send, *, again: bool = False
    ) -> None:
        """Send the SEND of ``msg_id``; its answer goes to ``send_answered``.

        ``send`` is the frame, or, while authenticated, its bytes from
        :func:`blindrelay.protocol.fastcodec.encode_send`; ``again`` as for :meth:`request`.
        """
        self._sending[request_id] = msg_id
        self._ask(request_id, again)
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
        """The connection is gone: every waiting request fails with ``exc`` (with
        :class:`NoAnswer` if it is why the connection is given up)."""
        self.lost = True
        self._pump.cancel()
        if not self.hello.done():
            self.hello.set_exception(exc)
            self.hello.exception()  # retrieved: nobody may be waiting any more
        for request_id, future in self._waiters.items():
            if not future.done():
                no_answer = self._no_answer if request_id in self._overdue else None
                future.set_exception(no_answer or exc)
                future.exception()
        self._waiters.clear()

    # --- Answers awaited (SPEC §9, T55) ----------------------------------------------

    def _ask(self, request_id: int, again: bool = False) -> None:
        if not self._asked:
            self._head_since = time.monotonic()
            self._asking.set()
        self._asked[request_id] = time.monotonic()
        if again:
            self._again.add(request_id)

    def _answered(self, request_id: int) -> None:
        self._again.discard(request_id)
        oldest = next(iter(self._asked), None)
        if self._asked.pop(request_id, None) is not None and request_id == oldest:
            self._head_since = time.monotonic()

    async def _watch(self) -> None:
        """Raise :class:`NoAnswer` once the oldest unanswered request has waited
        ``answer_timeout_s`` since it was asked and since the one before it was answered.

        A relay that answers keep-alive pings but never a request (or never one of
        them) kept its caller waiting for ever: the keep-alive proves only the socket.
        The clock of a request starts once those asked before it are answered, so a
        slow relay working through a long queue (the outbox resent after a reconnect)
        is not cut off while answers keep coming; one skipping a request is.
        """
        timeout = self._answer_timeout_s
        while True:
            if not self._asked:
                self._asking.clear()
                await self._asking.wait()
                continue
            oldest = next(iter(self._asked.values()))
            late = time.monotonic() - max(oldest, self._head_since) - timeout
            if late < 0:
                await asyncio.sleep(-late)
                continue
            # Those waiting that long fail with it when the link drops the connection
            # (:meth:`fail`), so their callers count the try; the others are just cut off.
            self._no_answer = NoAnswer(f"no answer from the relay within {timeout:g} s")
            now = time.monotonic()
            self._overdue = {rid for rid, at in self._asked.items() if now - at >= timeout}
            raise self._no_answer

    # --- Reading (SPEC §6.4, §6.5) ----------------------------------------------

    async def read(self) -> None:
        """Feed the machine every message until the connection ends (ConnectionLost), or
        until a request is left unanswered too long (:class:`NoAnswer`, :meth:`_watch`)."""
        receiving = asyncio.create_task(self._receive())
        watching = asyncio.create_task(self._watch())
        try:
            await asyncio.wait([receiving, watching], return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiving.cancel()
            watching.cancel()
        for task in (receiving, watching):
            if task.done() and not task.cancelled():
                task.result()  # raises why the connection ended

    async def _receive(self) -> None:
        while True:
            data = await self.transport.recv()
            if self._sent_received(data):
                continue
            was_authenticated = self.authenticated
            try:
                self.machine.receive_data(data)
            except UnsupportedVersion:
                raise
            except ProtocolError as exc:  # the relay's fault (a WELCOME for another, T56)
                log.warning("relay sent an invalid frame: %s", exc)
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
        self._answered(re)
        msg_id = self._sending.pop(re, None)
        if msg_id is not None:  # a SENT or an ERROR: the machine refuses any other (§2.2)
            if isinstance(frame, frames.Sent) and frame.msg_id != msg_id:
                # SPEC §6.3: the SENT of another message is no answer to this SEND (T69);
                # the relay's fault, so the SEND goes again on the next connection.
                log.warning("relay answered a SEND with the SENT of another message")
                raise ConnectionLost("relay answered a SEND with the SENT of another message")
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
        if (
            sent is None
            or self._sending.get(sent.re) != sent.msg_id  # not pending, or another's (T69)
            or not self.machine.receive_sent(sent)
        ):
            return False
        self._answered(sent.re)
        self._handlers.send_answered(self._sending.pop(sent.re), sent.at, None)
        return True


def _error_from(frame: frames.Error) -> ProtocolError:
    """The named exception for a relay ERROR (SPEC §9; unknown codes are 900, §12.3)."""
    return error_for_code(frame.code, frame.reason or "", frame.retry_after)


__all__ = ["ANSWER_TIMEOUT_S", "DRAIN_TIMEOUT_S", "Connection", "FrameHandlers", "NoAnswer"]
