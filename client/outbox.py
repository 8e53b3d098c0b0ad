"""The outbox: envelopes persisted until the relay has committed them (SPEC §6.3).

Theory of operation. An envelope enters the outbox in the keystore
transaction that advanced its session (``sending``), so a crash keeps both or
neither. It is transmitted at once when the link is online, and every
unanswered one again after each WELCOME, with the same ``msg_id``, which the
relay stores once. Its answer settles whoever waits for it: a future per
:meth:`Client.send`, or the :class:`Bulk` of a :meth:`Client.send_many`.

- **A send is done at SENT.** Then the entry is retired: deleted with the
  others answered in the same loop turn, in one keystore transaction.
- **What stays queued:** after a relay fault (SHUTTING_DOWN, INTERNAL) the
  envelope waits for the next connection; after RATE_LIMITED it goes again
  after ``retry_after`` while the sender's retries last — and always when it is
  a resend after a reconnect, whose first transmission may have been stored and
  even delivered (SPEC §6.4.5): giving up would tell the application "not sent"
  of a message its recipient may hold; after
  STORE_UNAVAILABLE (902) it goes again after ``retry_after``, answered once
  whether or not the first one was stored. Any other error is the outcome.

Not here: encrypting and choosing recipients (``sending``), the connection
(``link``, ``connection``), the SEND's bytes (``protocol.fastcodec``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

from blindrelay.protocol import frames
from blindrelay.protocol.content import Labels
from blindrelay.protocol.errors import (
    BlindrelayError,
    InternalError,
    ProtocolError,
    RateLimited,
    ShuttingDown,
    StoreUnavailable,
)
from blindrelay.protocol.fastcodec import encode_send
from blindrelay.protocol.transparency.bills import SentNotification

from .connection import Connection
from .keystore import KeyStore, OutboxEntry
from .link import RelayLink

log = logging.getLogger("blindrelay.client")

_RETRYABLE_SEND_ERRORS = (ShuttingDown, InternalError)
"""Relay faults after which a SEND stays in the outbox and is resent."""


class Outgoing(NamedTuple):
    """An envelope in the outbox, awaiting SENT.

    A named tuple rather than a frozen dataclass: one is made per message, and
    a tuple is built in one step instead of a guarded store per field.
    """

    msg_id: bytes
    to: str
    envelope: bytes
    intent: str = frames.Intent.CHAT
    category: str | None = None
    categories: tuple[str, ...] | None = None
    position: int = 0
    """When it was queued (ns, increasing within a profile): a restart resends in
    this order."""

    @classmethod
    def from_entry(cls, entry: OutboxEntry) -> Outgoing:
        return cls(
            entry.msg_id, entry.to, entry.envelope, entry.intent, entry.category,
            entry.categories, entry.position,
        )  # fmt: skip


Outcome = bytes | BlindrelayError
"""What became of one recipient of :meth:`Client.send_many`: the msg_id the
relay committed (SENT), or the error it ended with."""


class Bulk:
    """The bookkeeping of one :meth:`Client.send_many`: outcomes, sends in flight, one waiter.

    SENTs settle their message here instead of resolving a future each, and the
    sending coroutine is woken once the window has drained to a level, not once
    per message.
    """

    __slots__ = ("_level", "_waiter", "failure", "in_flight", "outcomes", "positions", "retries")

    def __init__(self, count: int, rate_limit_retries: int) -> None:
        self.outcomes: list[Outcome | None] = [None] * count
        self.positions: dict[bytes, int] = {}
        """msg_id in flight → its recipient's position."""
        self.in_flight = 0
        self.retries = rate_limit_retries
        self.failure: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._level = 0

    def expect(self, msg_id: bytes, position: int) -> None:
        self.positions[msg_id] = position
        self.in_flight += 1

    def settle(self, msg_id: bytes, error: BlindrelayError | None) -> None:
        position = self.positions.pop(msg_id)
        self.outcomes[position] = msg_id if error is None else error
        self.finished()

    def finished(self) -> None:
        """One send in flight (queued or on the per-recipient path) ended."""
        self.in_flight -= 1
        waiter = self._waiter
        if waiter is not None and self.in_flight <= self._level and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """The whole call ends with ``exc`` (the client stopped, or a bug)."""
        if self.failure is None:
            self.failure = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def slow_done(self, position: int, task: asyncio.Task[bytes]) -> None:
        """A recipient sent on the path of :meth:`Client.send` has its outcome."""
        if task.cancelled():
            return  # the call is over
        exc = task.exception()
        if exc is None:
            self.outcomes[position] = task.result()
        elif isinstance(exc, BlindrelayError):
            self.outcomes[position] = exc
        else:
            self.fail(exc)
        self.finished()

    async def drained(self, level: int) -> None:
        """Return once at most ``level`` sends are in flight; raise the failure if any."""
        while self.failure is None and self.in_flight > level:
            self._level = level
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.failure is not None:
            raise self.failure


class Outbox:
    """Envelopes awaiting SENT, persisted, transmitted, retried and retired (module docstring)."""

    def __init__(self, store: KeyStore, link: RelayLink) -> None:
        self._store = store
        self._link = link
        self._entries: dict[bytes, Outgoing] = {
            entry.msg_id: Outgoing.from_entry(entry) for entry in store.outbox()
        }
        """In the order they were queued (their positions' order), as a restart resends them."""
        self._clock = 0
        """The last entry's position: positions increase even within one nanosecond."""
        self._retiring: list[tuple[bytes, SentNotification | None]] = []
        """Entries answered since the last loop turn, deleted together (with the SENTs of
        notifications, kept)."""
        self._sent: dict[bytes, asyncio.Future[int]] = {}
        self._bulk_sends: dict[bytes, Bulk] = {}
        """msg_id → the :meth:`Client.send_many` it belongs to (instead of a future each)."""
        self._rate_limit_retries: dict[bytes, int] = {}
        self._transmitted: set[bytes] = set(self._entries)
        """Sent on some connection (those kept by the keystore, perhaps by an earlier
        process), unanswered: after a reconnect their fate is unknown."""
        self._resent: set[bytes] = set()
        """Sent again after a reconnect: a RATE_LIMITED answer never ends them."""

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Outgoing]:
        """The envelopes awaiting SENT, in the order they are (re)sent."""
        return list(self._entries.values())

    @property
    def awaited(self) -> int:
        """How many answers someone awaits (a send, or a bulk send's recipient)."""
        return len(self._sent) + len(self._bulk_sends)

    # --- Queueing ----------------------------------------------------------------

    def persist(self, msg_id: bytes, to: str, envelope: bytes, labels: Labels) -> Outgoing:
        """Write the entry for an envelope, inside the caller's keystore transaction.
        ``labels`` are the ones its content carries (SPEC §13.11): the SEND says the same."""
        self._clock = max(time.time_ns(), self._clock + 1)
        position = self._clock
        intent, category, categories = labels.intent, labels.category, labels.categories
        entry = OutboxEntry(position, msg_id, to, envelope, intent, category, categories)
        self._store.queue_outgoing(entry)
        return Outgoing(msg_id, to, envelope, intent, category, categories, position)

    def add(self, outgoing: Outgoing, rate_limit_retries: int = 0) -> asyncio.Future[int]:
        """A persisted entry joins the queue and goes out if online; the future resolves
        with SENT's ``at``, or raises the relay's error."""
        msg_id = outgoing.msg_id
        self._entries[msg_id] = outgoing
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._sent[msg_id] = future
        if rate_limit_retries:
            self._rate_limit_retries[msg_id] = rate_limit_retries
        conn = self._link.online
        if conn is not None:
            self._transmit(conn, outgoing)
        return future

    def add_bulk(self, bulk: Bulk, queued: list[tuple[int, Outgoing]]) -> None:
        """Persisted entries of ``bulk`` (with their recipients' positions) join the queue."""
        conn = self._link.online
        entries, bulk_sends = self._entries, self._bulk_sends
        for position, outgoing in queued:
            msg_id = outgoing.msg_id
            entries[msg_id] = outgoing
            bulk_sends[msg_id] = bulk
            bulk.expect(msg_id, position)
            if conn is not None:
                self._transmit(conn, outgoing)

    def forget_bulk(self, bulk: Bulk) -> None:
        """``bulk``'s call is over: its unanswered envelopes stay queued, unawaited."""
        for msg_id in bulk.positions:
            self._bulk_sends.pop(msg_id, None)

    # --- Transmitting and answers --------------------------------------------------

    def transmit_all(self, conn: Connection) -> None:
        """After WELCOME: every envelope awaiting SENT, in order (SPEC §6.3)."""
        self._resent.update(self._transmitted)
        for outgoing in list(self._entries.values()):
            self._transmit(conn, outgoing)

    def _transmit(self, conn: Connection, outgoing: Outgoing) -> None:
        self._transmitted.add(outgoing.msg_id)
        request_id = conn.next_request_id()
        # Resent after a reconnect: a connection ending under it again does not start
        # the backoff again (a relay closing every connection at this SEND, T56).
        again = outgoing.msg_id in self._resent
        if conn.authenticated:
            data = encode_send(
                request_id, outgoing.to, outgoing.msg_id, outgoing.intent, outgoing.envelope,
                outgoing.category, outgoing.categories,
            )  # fmt: skip
            conn.send_message(outgoing.msg_id, request_id, data, again=again)
            return
        conn.send_message(  # not sent while the connection closes: kept for the next
            outgoing.msg_id,
            request_id,
            frames.Send(
                id=request_id,
                to=outgoing.to,
                msg_id=outgoing.msg_id,
                intent=outgoing.intent,
                body=outgoing.envelope,
                category=outgoing.category,
                categories=outgoing.categories,
            ),
            again=again,
        )

    def send_answered(self, msg_id: bytes, at: int | None, error: ProtocolError | None) -> None:
        """A SEND got its answer: SENT at ``at``, or ``error``."""
        if error is not None:
            if isinstance(error, _RETRYABLE_SEND_ERRORS):
                return  # stays in the outbox; resent after the reconnect
            if isinstance(error, RateLimited) and msg_id in self._resent:
                self._retransmit_after(msg_id, error.retry_after_ms)
                return  # its first transmission may be stored: only SENT or a refusal ends it
            if isinstance(error, RateLimited) and self._retry_later(msg_id, error):
                return  # stays in the outbox: nothing was stored, the same envelope goes again
            if isinstance(error, StoreUnavailable):
                # SPEC §6.3: the relay's store is down for now; the same msg_id again after
                # retry_after is answered once, whether or not this one was stored.
                delay = max(error.retry_after_ms, 1) / 1000
                asyncio.get_running_loop().call_later(delay, self._retransmit, msg_id)
                return
        if self._rate_limit_retries:
            self._rate_limit_retries.pop(msg_id, None)
        self._transmitted.discard(msg_id)
        self._resent.discard(msg_id)
        done = self._entries.pop(msg_id, None)
        if done is not None:
            kept = None
            if error is None and done.intent == frames.Intent.NOTIFICATION:
                assert at is not None and done.category is not None
                kept = SentNotification(msg_id, done.to, done.category, at)  # for its bill
            self._retire(msg_id, kept)
        bulk = self._bulk_sends.pop(msg_id, None)
        if bulk is not None:
            bulk.settle(msg_id, error)
            return
        future = self._sent.pop(msg_id, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert at is not None
            future.set_result(at)

    def _retry_later(self, msg_id: bytes, error: RateLimited) -> bool:
        """Retransmit after ``retry_after`` if retries are left for ``msg_id``."""
        left = self._rate_limit_retries.get(msg_id)
        if left is None:
            bulk = self._bulk_sends.get(msg_id)
            left = bulk.retries if bulk is not None else 0
        if left <= 0:
            return False
        self._rate_limit_retries[msg_id] = left - 1
        self._retransmit_after(msg_id, error.retry_after_ms)
        return True

    def _retransmit_after(self, msg_id: bytes, retry_after_ms: int) -> None:
        delay = max(retry_after_ms, 1) / 1000
        asyncio.get_running_loop().call_later(delay, self._retransmit, msg_id)

    def _retransmit(self, msg_id: bytes) -> None:
        outgoing = self._entries.get(msg_id)
        conn = self._link.online
        if outgoing is not None and conn is not None:
            self._transmit(conn, outgoing)  # else the next WELCOME resends the outbox

    # --- Retiring and stopping -------------------------------------------------------

    def _retire(self, msg_id: bytes, kept: SentNotification | None = None) -> None:
        """Delete an answered envelope's outbox entry, with the others of this loop turn;
        a notification's SENT is kept in the same transaction (its bill is checked
        against it, SPEC §8.5).

        One keystore transaction per turn instead of one per SENT (with SQLite,
        one durable commit each). Until it runs, a crash only means the envelope
        is resent with its msg_id, which the relay answers from memory with its
        first ``at`` (SPEC §6.3), so the SENT kept then is the same.
        """
        if not self._retiring:
            asyncio.get_running_loop().call_soon(self.delete_retired)
        self._retiring.append((msg_id, kept))

    def delete_retired(self) -> None:
        """Delete the entries answered since the last loop turn (now, when closing)."""
        retiring, self._retiring = self._retiring, []
        if not retiring or self._link.failed:
            return
        try:
            with self._store.atomic():
                for msg_id, kept in retiring:
                    if self._store.retire_outgoing(msg_id) and kept is not None:
                        self._store.keep_sent_notification(kept)
        except Exception as exc:  # a broken store: stop, as when receiving
            log.error("cannot delete answered envelopes from the outbox: %r", exc)
            self._link.stop(exc)

    def fail_waiting(self, exc: BaseException) -> None:
        """Every awaited answer fails with ``exc``; the envelopes stay queued."""
        for future in self._sent.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()
        self._sent.clear()
        for bulk in set(self._bulk_sends.values()):
            bulk.fail(exc)
        self._bulk_sends.clear()


__all__ = ["Bulk", "Outbox", "Outcome", "Outgoing"]
