"""What every handler works with: the session it serves and the relay around it.

A :class:`Session` is one WebSocket connection seen from the handlers: the
sans-I/O :class:`RelayConnection` plus a :class:`Transport` that the I/O layer
implements (flush queued frames, close with a code, hold the connection's
later frames). Handlers never await: they either answer at once or call a
store operation and answer in :meth:`RelayContext.run_job`'s callback, after
its commit. What they must know before deciding (an account's current key …)
they read with :meth:`RelayContext.read`, also through a callback. Because
nothing awaits between receiving a frame and calling its operation, and a
read that is not answered at once holds the connection's later frames until
its callback has run, a connection's operations reach the store in frame
order, which is what keeps per-pair order (SPEC §6.4). The handlers do not
know which back end the :class:`~.store.Store` is, nor whether its reads are
answered at once (SQLite: nothing is ever held) or after a round trip.

Exceptions become ERROR frames only in :meth:`RelayContext.refuse`, via
``RelayConnection.send_error`` (SPEC §9): a :class:`ProtocolError` with its
code, anything else as INTERNAL_ERROR with no detail and logged by type only.

Not here: what a frame does (``auth``, ``directory``, ``delivery``) and which
handler runs (``dispatch``).
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from blindrelay.protocol.connection import RelayConnection, State
from blindrelay.protocol.errors import InternalError, ProtocolError, ShuttingDown
from blindrelay.protocol.frames import Frame, FrameType

from .config import RelayConfig
from .limiters import Limiters
from .logs import RefusalLog, log_event
from .metrics import RelayMetrics
from .ratelimit import Clock, wall_clock_ms
from .registration import RegistrationPolicy
from .routing import new_worker_id
from .store import Account, Store, StoreJobError


class SessionOutbox(Protocol):
    """What a session's delivery outbox (``outbox.Outbox``) offers the handlers.

    Declared here, where sessions are, so that this module needs nothing of
    ``delivery`` — which needs sessions — not even for type checking.
    """

    def start(self) -> None: ...
    def committed(
        self,
        delivery_id: int,
        encode: Callable[[], bytes],
        previous: int | None = None,
        received: float | None = None,
        before_commit: bool = False,
    ) -> None: ...
    def decided(
        self, delivery_id: int, encode: Callable[[], bytes], previous: int, received: float
    ) -> None: ...
    def push_ahead(
        self, delivery_id: int, encode: Callable[[], bytes], received: float
    ) -> bool: ...
    def withdrawn_early(self, delivery_id: int) -> None: ...
    def confirmed(self, delivery_id: int) -> None: ...
    def commit_failed(self, delivery_id: int) -> None: ...
    def held_until_committed(self, delivery_ids: tuple[int, ...]) -> tuple[int, ...]: ...
    def page_again(self) -> None: ...
    def up_to(self, previous: int) -> bool: ...
    def queued_elsewhere(self) -> None: ...
    def in_flight_of(self, delivery_ids: tuple[int, ...]) -> tuple[int, ...]: ...
    def acknowledged(self, delivery_ids: tuple[int, ...]) -> None: ...
    def withdraw(self, delivery_ids: list[int]) -> None: ...
    def drained(self) -> None: ...
    def close(self) -> None: ...


_SERIALS = itertools.count(1)

CLOSE_REPLACED = 4000
"""WebSocket close code when a newer login of the same account takes over (SPEC §4.4)."""


CLOSE_GOING_AWAY = 1001
"""WebSocket close code after SHUTTING_DOWN."""


CLOSE_STORE_FAILED = 1011
"""WebSocket close code when an envelope delivered before its commit was not committed
after all (SPEC §6.4.5): the client reconnects and gets the queue as it is."""


class Transport(Protocol):
    """What the I/O layer provides to a session."""

    def flush(self) -> None:
        """Write out ``conn.data_to_send()`` soon; close the socket if the state is CLOSED."""

    def write(self, data: bytes) -> None:
        """Queue one already encoded frame after what the machine queued, and flush."""

    def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` after flushing what is queued."""

    def hold(self, reason: str) -> None:
        """Handle none of the connection's later frames (those received already
        included) until ``reason`` is released; frames wait in order."""

    def release(self, reason: str) -> None:
        """Undo :meth:`hold` of ``reason``: the waiting frames are handled, in order,
        once nothing else holds them (not before this returns)."""

    @property
    def congested(self) -> bool:
        """It holds more than its bound for the connection (SPEC §1.2.4): no DELIVER is
        pushed until it tells the outbox it drained (``SessionOutbox.drained``)."""


READ_HOLD = "read"
"""The :meth:`Transport.hold` reason of a session waiting for a store read."""


_session_numbers = itertools.count(1)


class Session:
    """One connection: the protocol machine, its transport, and its delivery outbox."""

    def __init__(
        self,
        conn: RelayConnection,
        transport: Transport,
        peer: str,
        source: str = "",
        clock: Clock = wall_clock_ms,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        self.conn = conn
        self.on_sent = on_sent
        """Told the type of each frame :meth:`send` queues (``RelayMetrics.frame_sent``)."""
        self.transport = transport
        self.serial = next(_SERIALS)
        """This process's number for the connection: what per-connection limits key on."""
        self.peer = peer
        """``host:port`` of the other end, for logs."""
        self.source = source
        """The source address the registration limit counts (SPEC §4.6.1):
        :func:`.registration.source_key` of the peer's address."""
        self.outbox: SessionOutbox | None = None
        self.account: Account | None = None
        """The authenticated account, set at WELCOME. Its handle and kind never
        change, so handlers take them from here instead of the store; where the
        identity key matters, they read it (:meth:`RelayContext.read_account`)."""
        self.ended = False
        self.refusals = RefusalLog(clock)
        """Where this connection's refusals are logged, within a budget."""
        self.number = next(_session_numbers)
        """Tells this connection from the others of this relay process (``open_session``)."""
        self.recorded = False
        """The store records this connection as its account's live one (``open_session``)."""
        self.login_seq = 0
        """The account's login sequence when this connection logged in (the store counts
        logins per account, ``login_counts``); 0 for a registration. A LOGIN hint of
        another worker with a higher one replaces this connection (SPEC §1.2.3)."""
        self._reads_waiting = 0

    def wait_for_read(self) -> None:
        """A store read for this connection was not answered at once: hold its later
        frames until :meth:`read_answered` (reads nest: one hold for all)."""
        if not self._reads_waiting:
            self.transport.hold(READ_HOLD)
        self._reads_waiting += 1

    def read_answered(self) -> None:
        self._reads_waiting -= 1
        if not self._reads_waiting:
            self.transport.release(READ_HOLD)

    @property
    def waiting_for_read(self) -> bool:
        """Frames are held for a store read (:meth:`RelayContext.read`)."""
        return self._reads_waiting > 0

    @property
    def handle(self) -> str | None:
        return self.conn.handle

    @property
    def open(self) -> bool:
        return not self.ended and self.conn.state is not State.CLOSED

    def send(self, frame: Frame) -> None:
        """Queue ``frame`` if the connection is still open (callbacks may arrive late)."""
        if self.open:
            self.conn.send(frame)
            self.transport.flush()
            if self.on_sent is not None:
                self.on_sent(frame.TYPE)

    def send_encoded(self, data: bytes) -> None:
        """Queue a SENT or DELIVER the relay encoded itself (``protocol.fastcodec``).

        Only for frames that change no connection state and are valid by
        construction; everything else goes through :meth:`send`.
        """
        if self.open:
            self.transport.write(data)

    def shut_down(self) -> None:
        """SPEC §9: ERROR 901 SHUTTING_DOWN, then close with 1001."""
        if self.open:
            self.conn.send_error(ShuttingDown())
            if self.on_sent is not None:
                self.on_sent(FrameType.ERROR)
            self.transport.close(CLOSE_GOING_AWAY, "shutting down")


NEWER_LOGINS_KEPT = 4096
"""Logins heard from other workers that are remembered for connections whose own login
is still being committed here; a hint outlives its usefulness within milliseconds."""


class Sessions:
    """Live authenticated sessions by handle: one per account (SPEC §1.2.3, §4.4),
    across all relay processes sharing the store."""

    def __init__(self) -> None:
        self._live: dict[str, Session] = {}
        self._newer: OrderedDict[str, int] = OrderedDict()
        """handle → the highest login sequence another worker announced (LOGIN hints)."""

    def get(self, handle: str) -> Session | None:
        return self._live.get(handle)

    def __len__(self) -> int:
        """Accounts with a live session in this process."""
        return len(self._live)

    def serves(self, handle: str) -> bool:
        """Whether ``handle``'s live session, with its outbox, is in this process."""
        session = self._live.get(handle)
        return session is not None and session.outbox is not None

    def attach(self, session: Session) -> bool:
        """Make ``session`` its account's live session, closing the previous one;
        False (and ``session`` closed instead) if another worker announced a newer login
        of the account while this one was being committed.

        "A new login MUST close the account's previous connection (4000 replaced)."
        """
        handle = session.handle
        assert handle is not None
        if session.login_seq < self._newer.get(handle, 0):
            _replace(session)
            return False
        previous = self._live.get(handle)
        self._live[handle] = session
        if previous is not None and previous is not session:
            _replace(previous)
        return True

    def logged_in_elsewhere(self, handle: str, login_seq: int) -> None:
        """Another worker committed a login of ``handle`` with ``login_seq``: a live
        session here with a lower sequence is replaced, and so is one whose login is
        still being committed here (:meth:`attach`)."""
        newer = self._newer
        if login_seq > newer.get(handle, 0):
            newer[handle] = login_seq
            newer.move_to_end(handle)
            if len(newer) > NEWER_LOGINS_KEPT:
                newer.popitem(last=False)
        session = self._live.get(handle)
        if session is not None and session.login_seq < login_seq:
            del self._live[handle]
            _replace(session)

    def detach(self, session: Session) -> None:
        handle = session.handle
        if handle is not None and self._live.get(handle) is session:
            del self._live[handle]

    def all(self) -> list[Session]:
        return list(self._live.values())


def _replace(session: Session) -> None:
    """Close ``session`` for a newer login of its account (SPEC §1.2.3)."""
    if session.outbox is not None:
        session.outbox.close()
    session.outbox = None
    session.ended = True
    session.transport.close(CLOSE_REPLACED, "replaced")
    log_event(logging.INFO, "session_replaced", handle=session.handle, peer=session.peer)


@dataclass
class RelayContext:
    """The relay's shared state, as handlers see it."""

    config: RelayConfig
    clock: Clock
    relay_key: bytes
    store: Store
    """Every operation (:data:`.store.operations.CONTRACT`) and every read
    (:data:`.store.operations.READS`) handlers make."""
    limiters: Limiters
    registration: RegistrationPolicy
    """SPEC §4.6: what a REGISTER must pass besides its proof."""
    sessions: Sessions = field(default_factory=Sessions)
    worker_id: str = field(default_factory=new_worker_id)
    """This relay process among those sharing the store (:mod:`.routing`)."""
    stopping: bool = False
    """Set by shutdown: frames that arrive now are refused with SHUTTING_DOWN."""
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    """What ``/metrics`` and ``/readyz`` report (:mod:`.metrics`): counts, never who."""

    def refuse(self, session: Session, frame: Frame | None, exc: BaseException) -> None:
        """The one place a handler's exception becomes an ERROR frame (SPEC §9)."""
        re = getattr(frame, "id", None)
        frame_type = frame.TYPE.name if frame is not None else None
        if isinstance(exc, ProtocolError):
            session.refusals.log(
                logging.INFO, "refused", type=frame_type, handle=session.handle,
                code=int(exc.code), error=exc.code.name,
            )  # fmt: skip
        else:
            # "Internal errors MUST NOT carry detail": the peer gets the bare code;
            # the log gets the exception type and place, never its message.
            if isinstance(exc, StoreJobError):  # raised inside the store
                exc_type, exc_at = exc.exc_type, exc.exc_at
            else:
                exc_type, exc_at = type(exc).__name__, _where(exc)
            log_event(
                logging.ERROR, "internal_error", type=frame_type, handle=session.handle,
                exc_type=exc_type, exc_at=exc_at,
            )  # fmt: skip
            exc = InternalError()
        assert isinstance(exc, ProtocolError)
        self.metrics.error(int(exc.code))
        if session.open:
            session.conn.send_error(exc, re=re)
            session.transport.flush()

    def guard(self, session: Session, frame: Frame | None, action: Callable[[], None]) -> None:
        """Run ``action``; any exception is refused on ``session``."""
        try:
            action()
        except Exception as exc:
            self.refuse(session, frame, exc)

    def run_job(
        self,
        session: Session,
        frame: Frame | None,
        operation: str,
        args: tuple[Any, ...],
        on_result: Callable[[Any], None],
        decided: Callable[[Any], None] | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run store ``operation`` (:data:`.store.operations.CONTRACT`); after its commit
        run ``on_result`` with its value, or ``on_failed`` with its error and refuse it.
        ``decided``: ``Store.call``'s, the value before the commit where the back end
        reports it."""

        def done(ok: bool, value: Any) -> None:
            if not ok:
                if on_failed is not None:
                    on_failed(value)
                self.refuse(session, frame, value)
                return
            try:
                on_result(value)
            except Exception as exc:
                self.refuse(session, frame, exc)

        self.store.call(operation, args, done, decided)

    def read(
        self,
        session: Session,
        frame: Frame | None,
        name: str,
        args: tuple[Any, ...],
        on_result: Callable[[Any], None],
    ) -> None:
        """Read ``name`` (:data:`.store.operations.READS`) and run ``on_result`` with its
        value, or refuse its error (as :meth:`run_job`); nothing once the session is gone.

        Answered at once (SQLite), ``on_result`` runs before this returns and that is
        all. Answered later (a round trip), the session's later frames are held until
        ``on_result`` has run, so they reach the store after what it calls — in
        frame order (a PREKEYS_UPLOAD's operation before the next BUNDLE_FETCH's) —
        and no other connection waits.
        """
        pending = _PendingRead(self, session, frame, on_result)
        self.store.read(name, args, pending.done)
        if not pending.answered:
            pending.held = True
            session.wait_for_read()

    def read_account(
        self, session: Session, frame: Frame | None, on_account: Callable[[Account], None]
    ) -> None:
        """:meth:`read` of the session's own account, as committed now: for its current
        identity key (``session.account`` keeps only what never changes)."""
        handle = session.handle
        assert handle is not None  # only authenticated sessions have an account

        def found(account: Account | None) -> None:
            assert account is not None  # accounts are never deleted
            on_account(account)

        self.read(session, frame, "account", (handle,), found)


class _PendingRead:
    """One :meth:`RelayContext.read`: its answer, and whether frames are held for it."""

    __slots__ = ("answered", "ctx", "frame", "held", "on_result", "session")

    def __init__(
        self,
        ctx: RelayContext,
        session: Session,
        frame: Frame | None,
        on_result: Callable[[Any], None],
    ) -> None:
        self.ctx = ctx
        self.session = session
        self.frame = frame
        self.on_result = on_result
        self.answered = False
        self.held = False

    def done(self, ok: bool, value: Any) -> None:
        self.answered = True
        session = self.session
        try:
            if not ok:
                self.ctx.refuse(session, self.frame, value)
            elif session.open:
                try:
                    self.on_result(value)
                except Exception as exc:
                    self.ctx.refuse(session, self.frame, exc)
        finally:
            if self.held:  # after on_result: what it called goes before the next frame's
                session.read_answered()


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
