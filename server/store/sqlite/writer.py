"""The relay's side of the writer process: submit jobs by name, get outcomes in order.

Why: SQLite allows one writer, and commits must not run on the event loop.
A writer thread shared the GIL with the loop (each SQLite call gives it up and
must win it back); the writer now is a separate process
(:mod:`.writer_process`) on its own core.

IPC, with no pickle anywhere (the package forbids it): a Unix socketpair
carrying msgpack. The loop sends one message per loop turn, the list of jobs
submitted in that turn, each ``[job id, operation name, args]`` (operations
are the functions of :data:`.jobs.OPERATIONS`) — except that a job submitted while
no job is in flight goes at once, alone, and that jobs nobody waits on (*deferrable*:
a chat already pushed under a delivery lease, an ACK's deletion) leave at most once per
:data:`HAND_OVER_SPACING_S` (:meth:`Writer.call`). The writer commits whatever has
arrived as one transaction and answers with one message per committed batch:
``[[job id, ok, value or (error code name, detail)], …], log lines, [jobs, batch s,
COMMIT s]]``. A
``ProtocolError`` comes back as its code name and is raised again as the same
class; anything else comes back as INTERNAL_ERROR with its type and place
(:class:`~blindrelay.server.store.StoreJobError`). Outcomes arrive in submission order — which keeps
deliveries in delivery-id order and per-pair order — and all outcomes of a
batch are handled in one loop callback (``data_received``), so the loop does
no per-job future bookkeeping unless a caller asks for a future.

Guarantees (unchanged from the thread): a job's outcome is reported only after
the transaction holding it committed (with ``synchronous=FULL``, on disk).

Decisions before the commit (SPEC §6.4): for the operations in
:data:`.writer_process.DECIDED_BEFORE_COMMIT` (``send``), the writer also sends
``["decided", [[job id, value], …], taken, sent]`` once the batch has run and before
its COMMIT, for each that succeeded; a caller that passed ``decided`` to
:meth:`Writer.call` gets the value then. It is a decision, not a promise: ``done``
still comes after the commit, and says whether the commit happened. Decisions arrive
in submission order; a batch's may arrive before the previous batch's answers, which
wait for their fsync in the durability thread while the next batch is decided (the
outbox was traced against that order in review: its cursor and ``previous`` checks do
not depend on it). ``taken`` and
``sent`` are when the writer took the batch and sent its decisions (``time.monotonic``,
which Linux keeps the same in every process): with the time each job was called here
they split a decision's way into three stages (:attr:`Writer.on_decided`).

Small jobs that arrive in bursts (an ACK per delivered notification) can be
merged: :meth:`Writer.call_many` appends to the previous job when that job is
the same operation and still the last one queued, so merging never reorders
anything. The operation takes the list of items and returns one result per
item; one job then costs one IPC entry and one callback instead of one each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from blindrelay.protocol.errors import ERRORS_BY_CODE, ErrorCode, InternalError

from ... import gcpolicy
from ...logs import LOGGER, log_event
from .. import Done, StoreJobError, StoreStartError, settling

HAND_OVER_SPACING_S = 0.002
"""Least time between two hand-overs that hold only deferrable jobs (:meth:`Writer.call`)."""

SOCKET_BUFFER_BYTES = 4 << 20
"""Room for many batches in flight, so neither side waits on the other's reads."""


class WriterStartError(StoreStartError):
    """The writer process could not open the database."""


def _exception(error: list[Any]) -> BaseException:
    code = error[0]
    if code == "INTERNAL_ERROR" and len(error) > 2:
        return StoreJobError(error[2], error[3])
    cls = ERRORS_BY_CODE.get(ErrorCode[code], InternalError)
    return cls(error[1])


class _Channel(asyncio.Protocol):
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.unpacker = msgpack.Unpacker(raw=False)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for message in self.unpacker:
            self.writer._received(message)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.writer._lost()


class Writer:
    """Handle on the writer process; one per relay, used only on its event loop."""

    def __init__(
        self, path: Path, synchronous: str, gc_threshold: int = gcpolicy.DEFAULT_THRESHOLD
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.gc_threshold = gc_threshold
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._started: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._pending: list[list[Any]] = []
        self._merging: tuple[str, list[Any], list[Done]] | None = None
        """The last queued job when it came from :meth:`call_many`: operation, items, callbacks."""
        self._waiting: deque[tuple[int, Done]] = deque()
        self._deciding: dict[int, tuple[Callable[[Any], None], float]] = {}
        """Job id → its ``decided`` callback and when it was called, until the job's answer."""
        self._next_id = 0
        self._soon = False
        """A hand-over is due at the end of this loop turn."""
        self._timer: asyncio.TimerHandle | None = None
        """A hand-over of deferrable jobs is due when it fires."""
        self._last_hand_over = 0.0
        """``loop.time()`` of the last hand-over."""
        self._running = False
        self._closing = False
        self.pid: int | None = None
        self.on_lost: Callable[[], None] | None = None
        """Called if the process goes away while the relay still needs it."""
        self.on_batch: Callable[[int, float, float], None] | None = None
        """Each committed batch's jobs, whole time and COMMIT time (``Store.on_batch``)."""
        self.on_decided: Callable[[float, float, float], None] | None = None
        """Each decision's three stages (``Store.on_decided``): from the call to the
        writer taking its batch, the batch deciding, and the decision's way back."""

    async def start(self) -> None:
        """Start the process and wait until it has opened the database (or failed to)."""
        loop = self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        try:
            self._process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
                [
                    sys.executable,
                    "-m",
                    "blindrelay.server.store.sqlite.writer_process",
                    str(theirs.fileno()),
                    str(os.getpid()),
                    str(self.path),
                    self.synchronous,
                    str(LOGGER.getEffectiveLevel()),
                    str(self.gc_threshold),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self._process.pid
        self._started = loop.create_future()
        self._closed = loop.create_future()
        try:
            self._transport, _ = await loop.create_unix_connection(
                lambda: _Channel(self), sock=ours
            )
            await self._started
        except BaseException:
            await self._reap(kill=True)
            raise
        self._running = True

    @property
    def running(self) -> bool:
        return self._running

    def call(
        self,
        operation: str,
        args: list[Any] | tuple[Any, ...],
        done: Done,
        decided: Callable[[Any], None] | None = None,
        deferrable: bool = False,
    ) -> None:
        """Queue ``operation(store, *args)``; ``done`` runs after its commit, and
        ``decided`` (if the operation is decided before its commit, module docstring)
        with its value before.

        With a job in flight, everything called in this loop turn goes out in one
        message at the turn's end, and the writer commits it with whatever else has
        arrived by then. With none in flight the writer is idle, and the job goes at
        once: the writer starts on it while the loop handles the rest of its turn,
        whose jobs follow at its end. Why (issue 19): handing over only at the end of
        a turn made the two processes take turns — a long turn meant a large batch,
        a large batch a long turn — and at the same rate and CPU per message a
        relay settled into batches of ~4 or of ~8 messages, the latter with twice
        the latency. Order is the same either way: jobs leave in the order called.

        ``deferrable``: nobody waits on this job but its sender's SENT — a chat whose
        DELIVER left already under a delivery lease (SPEC §6.4.6), an ACK's deletion.
        It leaves at once only if no hand-over happened in the last
        :data:`HAND_OVER_SPACING_S`; else when that much time has passed since, unless a
        job that is not deferrable comes first and takes it along, in order. Why (issue
        19): at moderate rates an idle writer took every SEND and every ACK alone, each
        a batch with its fsync, its thread hand-off and its answer, each a wake-up of
        three threads; at a quarter of the relay's maximum that cost the relay 456 µs of
        CPU per message, 1.5 writer wake-ups per message, and both cores 89 % busy.
        Spaced, 328 µs, 0.55 wake-ups, 69 % (``bench/threads.py --rate 2300``). The price
        is the SENT of such a chat: at most that much later, 0.5 ms at the median there.
        """
        if not self._running:
            raise InternalError("writer is not running")
        loop = self._loop
        assert loop is not None
        self._merging = None
        job_id = self._next_id
        self._next_id = job_id + 1
        idle = len(self._waiting) == len(self._pending)  # nothing handed over unanswered
        self._pending.append([job_id, operation, args])
        self._waiting.append((job_id, done))
        if decided is not None:
            self._deciding[job_id] = (decided, time.monotonic())
        if deferrable:
            if self._timer is not None or self._soon:
                return  # it leaves with the hand-over already due
            wait = self._last_hand_over + HAND_OVER_SPACING_S - loop.time()
            if wait > 0:
                self._timer = loop.call_later(wait, self._hand_over)
                return
        if idle:
            self._hand_over()
        elif not self._soon:
            self._soon = True
            loop.call_soon(self._hand_over)

    def call_many(self, operation: str, item: Any, done: Done, deferrable: bool = False) -> None:
        """Queue ``item`` for ``operation(store, items)``, which returns one result per item.

        If the last job queued in this loop turn is the same operation and has not
        left yet, ``item`` joins it: nothing submitted in between, so order is as if
        each item were its own job. ``done`` gets this item's result, or the job's
        error (the merged job commits or fails as a whole). A job handed to an idle
        writer at once (:meth:`call`) has left: the next item starts another.
        ``deferrable`` as for :meth:`call`.
        """
        merging = self._merging
        if merging is not None and merging[0] == operation and self._running:
            merging[1].append(item)
            merging[2].append(done)
            return
        items, dones = [item], [done]
        self.call(operation, (items,), lambda ok, value: _each(dones, ok, value), None, deferrable)
        if self._pending:  # still queued for the turn's end: later items may join it
            self._merging = (operation, items, dones)

    def submit(self, operation: str, *args: Any) -> asyncio.Future[Any]:
        """:meth:`call` with a future, for callers that await."""
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self.call(operation, args, settling(future))
        return future

    def _hand_over(self) -> None:
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        self._merging = None
        if batch and self._transport is not None and not self._transport.is_closing():
            assert self._loop is not None
            self._last_hand_over = self._loop.time()
            self._transport.write(msgpack.packb(batch, use_bin_type=True))

    def _received(self, message: list[Any]) -> None:
        if self._started is not None and not self._started.done():
            if message[0] == "ready":
                self._started.set_result(None)
            else:
                self._started.set_exception(WriterStartError(f"{message[1]}: {message[2]}"))
            return
        if message[0] == "decided":
            self._decided(message[1], message[2], message[3])
            return
        answers, logs, stats = message
        deciding = self._deciding
        for level, event, fields in logs:
            log_event(level, event, **fields)
        if self.on_batch is not None:
            self.on_batch(*stats)
        waiting = self._waiting
        for job_id, ok, value in answers:
            expected, done = waiting.popleft()
            assert expected == job_id, "writer answers out of order"
            if deciding:
                deciding.pop(job_id, None)
            try:
                done(ok, value if ok else _exception(value))
            except Exception as exc:  # a callback's bug must not lose the others' outcomes
                log_event(
                    logging.ERROR, "internal_error", exc_type=type(exc).__name__,
                    exc_at=_where(exc),
                )  # fmt: skip

    def _decided(self, decisions: list[list[Any]], taken: float, sent: float) -> None:
        deciding = self._deciding
        stages = self.on_decided
        now = time.monotonic()
        decide_s, back_s = max(sent - taken, 0.0), max(now - sent, 0.0)
        for job_id, value in decisions:
            entry = deciding.pop(job_id, None)
            if entry is None:
                continue
            decided, called = entry
            if stages is not None:
                stages(max(taken - called, 0.0), decide_s, back_s)
            try:
                decided(value)
            except Exception as exc:  # a callback's bug must not lose the others' decisions
                log_event(
                    logging.ERROR, "internal_error", exc_type=type(exc).__name__,
                    exc_at=_where(exc),
                )  # fmt: skip

    def _lost(self) -> None:
        """The socket closed: after our EOF at close, or because the process died."""
        self._running = False
        self._merging = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deciding.clear()
        if self._started is not None and not self._started.done():
            self._started.set_exception(WriterStartError("writer process exited"))
        waiting, self._waiting = self._waiting, deque()
        unexpected = not self._closing and self._started is not None and self._started.done()
        if unexpected or waiting:
            log_event(logging.ERROR, "writer_lost", jobs=len(waiting))
        for _job_id, done in waiting:
            try:
                done(False, InternalError())
            except Exception as exc:
                log_event(
                    logging.ERROR, "internal_error", exc_type=type(exc).__name__,
                    exc_at=_where(exc),
                )  # fmt: skip
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if unexpected and self.on_lost is not None:
            self.on_lost()

    async def close(self) -> None:
        """Send what is queued, let the writer commit and answer it all, then stop it."""
        if self._transport is None:
            return
        self._closing = True
        assert self._closed is not None
        if not self._closed.done():
            self._hand_over()
            self._running = False
            if self._transport.can_write_eof():
                self._transport.write_eof()
            else:
                self._transport.close()
            await self._closed
        await self._reap(kill=False)

    async def _reap(self, *, kill: bool) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            process.kill()
        await asyncio.to_thread(process.wait)


def _each(dones: list[Done], ok: bool, value: Any) -> None:
    """A merged job's outcome, item by item: its result, or everyone its error."""
    results = value if ok else [value] * len(dones)
    for done, result in zip(dones, results, strict=True):
        try:
            done(ok, result)
        except Exception as exc:  # one callback's bug must not lose the others' outcomes
            log_event(logging.ERROR, "internal_error", exc_type=type(exc).__name__,
                      exc_at=_where(exc))  # fmt: skip


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
