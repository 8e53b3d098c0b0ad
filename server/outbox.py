"""A connection's deliveries (SPEC §6.4, §6.5): the outbox that pushes DELIVERs in
delivery-id order within the window, pages the queue, and holds ACKs of envelopes whose
commit is in flight.

Why a module of its own: what tells an outbox of new envelopes (``delivery``, for this
process's store and for other workers' hints) changes with the store and the routing;
the outbox's invariants (module ``Outbox`` docstring) do not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from blindrelay.protocol.errors import StoreUnavailable
from blindrelay.protocol.fastcodec import encode_deliver

from .context import CLOSE_STORE_FAILED, RelayContext, Session
from .logs import LOGGER, log_event


def deliver_row(row: list[Any]) -> bytes:
    """The DELIVER of a queue row as the store returns it (``store.envelope_row``):
    encoded straight from values that were checked when their SEND was decoded."""
    return encode_deliver(row[0], row[2], row[3], row[4], row[5], row[8], row[9], row[6], row[7])


def page_full(rows: list[list[Any]], limit: int, max_bytes: int) -> bool:
    """Whether rows past the page's may be queued: it holds ``limit`` rows, or its
    bodies reach ``max_bytes``, where the store stops reading (``page`` operation)."""
    return len(rows) >= limit or sum(len(row[9]) for row in rows) >= max_bytes


def delete_acknowledged(ctx: RelayContext, session: Session, ids: tuple[int, ...]) -> None:
    """The store deletes acknowledged rows (SPEC §6.5), whose commits are known."""
    handle = session.handle

    def acked(ok: bool, deleted: Any) -> None:
        if not ok:
            ctx.refuse(session, None, deleted)
        elif LOGGER.isEnabledFor(logging.DEBUG):
            log_event(logging.DEBUG, "acked", handle=handle, ids=len(ids), deleted=deleted)

    # One operation for consecutive ACKs (a fan-out's recipients acknowledge together).
    ctx.store.call_many("acknowledge", [handle, ids], acked)


class Outbox:
    """Deliveries of one authenticated connection (SPEC §6.4).

    Invariants: every envelope pushed has a delivery id greater than
    ``cursor`` at that moment, so order is delivery-id order and nothing is
    pushed twice on one connection; at most ``window`` are unacknowledged.

    ``behind`` means the queue may hold rows past ``cursor`` that were not
    pushed (the window was full, or the connection is new); they are paged
    in by a store operation. Results arrive in submission order, so a
    commit whose callback arrives while a page is being read was committed
    before that read and is in it (or beyond its limit, which sets ``behind``).
    A hint from another worker has no such order with this store's answers
    (:meth:`queued_elsewhere`): it makes the outbox page once more after a page
    being read now.
    """

    def __init__(self, ctx: RelayContext, session: Session) -> None:
        self.ctx = ctx
        self.session = session
        self.window = ctx.config.delivery_window
        self.page_bytes = ctx.config.max_outgoing_buffer_bytes
        """Envelope bytes one page reads at most (the store stops at the row that reaches
        it): a page of the window (256 envelopes of 40 KiB) was 10 MiB read by the store
        and pushed to a connection that may never read (threat model T82), and a cap in
        rows at the largest frame (16) cost an honest drain of small envelopes a fifth."""
        self.in_flight: set[int] = set()
        self.cursor = 0
        self.behind = True
        self.paging = False
        self.again = False
        """A page being read may have started before rows were committed elsewhere:
        page again after it."""
        self.withdrawn: set[int] = set()
        """Delivery ids above ``cursor`` purged by a statement: never pushed (SPEC §7.4)."""
        self.uncommitted: set[int] = set()
        """Pushed before their commit was answered (:meth:`decided`)."""
        self.acks_waiting: set[int] = set()
        """Of ``uncommitted``, those acknowledged already: deleted once committed."""

    def start(self) -> None:
        """A new connection: everything queued is due, unacknowledged ones again."""
        self._page_in()

    def decided(
        self, delivery_id: int, encode: Callable[[], bytes], previous: int, received: float
    ) -> None:
        """A new envelope for this account was decided, and its commit is in flight.

        Pushed at once like a committed one (:meth:`committed`), except while a page is
        being read: that page may come from earlier in the same transaction, before
        this envelope, so the outbox pages once more after it (a committed envelope's
        answer, coming in order, would be in the page).
        """
        if self.paging:
            self.again = True
            return
        self.committed(delivery_id, encode, previous, received, before_commit=True)

    def push_ahead(self, delivery_id: int, encode: Callable[[], bytes], received: float) -> bool:
        """Push a SEND's envelope under a delivery lease, before its job is even handed to
        the store (SPEC §6.4.6), if the outbox is up to date: nothing being paged or left
        behind, and room in the window. False: not pushed, and it goes as any other.

        The caller has made sure no earlier SEND to this account still waits for its
        decision (``Store.lease_send``): this id is the newest, so the cursor moves past
        nothing that may yet be pushed. Its ACK waits for the commit, as after
        :meth:`decided`."""
        if (
            self.paging
            or self.behind
            or len(self.in_flight) >= self.window
            or self.session.transport.congested
            or delivery_id <= self.cursor
            or self.session.outbox is not self
        ):
            return False
        self._push(delivery_id, encode, received, before_commit=True, before_decision=True)
        return True

    def withdrawn_early(self, delivery_id: int) -> None:
        """A DELIVER pushed first (:meth:`push_ahead`) whose SEND the store answered as a
        resend or refused as a reuse of its msg_id (SPEC §6.4.6): never stored, and its
        id never given to another envelope (the relay process numbers them), so the
        connection stays open — the outbox forgets it, freeing its place in the window,
        and an ACK of it (held, or still to come) deletes nothing."""
        self.uncommitted.discard(delivery_id)
        self.acks_waiting.discard(delivery_id)
        if delivery_id in self.in_flight:
            self.in_flight.discard(delivery_id)
            self.ctx.metrics.acknowledged(1)
            self._page_in()

    def confirmed(self, delivery_id: int) -> None:
        """The envelope pushed by :meth:`decided` is committed: an ACK of it held
        meanwhile deletes it now — also when this connection has ended since, or the
        envelope would be delivered again for nothing."""
        self.uncommitted.discard(delivery_id)
        if delivery_id in self.acks_waiting:
            self.acks_waiting.discard(delivery_id)
            delete_acknowledged(self.ctx, self.session, (delivery_id,))

    def commit_failed(self, delivery_id: int) -> None:
        """The envelope pushed by :meth:`decided` was never committed (the store
        failed; the sender got an error, not SENT). The connection is closed with 1011:
        its delivery ids from here on could be given to other envelopes, and the
        client, reconnecting, gets the queue as it truly is (SPEC §6.4.5)."""
        if delivery_id not in self.uncommitted:
            return
        self.uncommitted.discard(delivery_id)
        self.acks_waiting.discard(delivery_id)
        self._store_failed("deliver_uncommitted")

    def _store_failed(self, event: str) -> None:
        """Close the connection with 1011 ``store failed`` (SPEC §9), logged as ``event``."""
        session = self.session
        if session.outbox is not self:
            return  # the connection has ended already
        self.close()
        session.outbox = None
        session.ended = True
        session.transport.close(CLOSE_STORE_FAILED, "store failed")
        log_event(logging.WARNING, event, handle=session.handle)

    def held_until_committed(self, delivery_ids: tuple[int, ...]) -> tuple[int, ...]:
        """Of these acknowledged ids, those the store may delete now; the others' commits
        are in flight, and they are deleted once committed (:meth:`confirmed`) — an id
        whose commit failed may be given to another envelope."""
        uncommitted = self.uncommitted
        if not uncommitted:
            return delivery_ids
        self.acks_waiting.update(i for i in delivery_ids if i in uncommitted)
        return tuple(i for i in delivery_ids if i not in uncommitted)

    def committed(
        self,
        delivery_id: int,
        encode: Callable[[], bytes],
        previous: int | None = None,
        received: float | None = None,
        before_commit: bool = False,
    ) -> None:
        """A new envelope for this account was committed.

        Pushed at once only if every envelope queued before it (``previous`` and
        below) is at or under the cursor: otherwise one was committed that this
        outbox was not told of (by another relay process, or whose answer was lost),
        and pushing this one would move the cursor past it — so the queue is paged.
        """
        if previous is None or previous > self.cursor:
            self.page_again()
            return
        if self.paging or self.behind:
            return
        if len(self.in_flight) >= self.window or self.session.transport.congested:
            self.behind = True  # paged once there is room (SPEC §1.2.4, §6.4)
            return
        self._push(delivery_id, encode, received, before_commit)

    def page_again(self) -> None:
        """Rows may be queued past the cursor that were not pushed: page them in."""
        self.behind = True
        self._page_in()

    def up_to(self, previous: int) -> bool:
        """Nothing is being paged or left behind, and every delivery id up to ``previous``
        has been seen: an envelope after it may be pushed at once."""
        return not self.paging and not self.behind and previous <= self.cursor

    def queued_elsewhere(self) -> None:
        """Rows may have been committed to this account's queue by another worker (a
        QUEUED hint, or a catch-up after hints were lost): page them in promptly — and
        once more after a page being read now, which may have been read before them."""
        self.behind = True
        if self.paging:
            self.again = True
            return
        self._page_in()

    def in_flight_of(self, delivery_ids: tuple[int, ...]) -> tuple[int, ...]:
        """Those of ``delivery_ids`` pushed on this connection and not acknowledged yet."""
        in_flight = self.in_flight
        return tuple(i for i in delivery_ids if i in in_flight)

    def acknowledged(self, delivery_ids: tuple[int, ...]) -> None:
        """``delivery_ids``: as :meth:`in_flight_of` returned them (all in flight)."""
        self.in_flight.difference_update(delivery_ids)
        self.ctx.metrics.acknowledged(len(delivery_ids))
        self._page_in()

    def close(self) -> None:
        """The connection ended: what is in flight is delivered again at the next login."""
        self.ctx.metrics.connection_lost(len(self.in_flight))
        self.in_flight = set()
        # ``uncommitted`` and ``acks_waiting`` stay: their commits' answers still come
        # here (``delivery.send`` keeps the outbox it told), and a held ACK then applies.

    def withdraw(self, delivery_ids: list[int]) -> None:
        """Rows a block or revoke purged (SPEC §7.4).

        "From the OK on, the relay MUST NOT deliver anything the new state
        refuses, including envelopes that were queued before": whatever this
        outbox holds of them — in flight, or read by a page that has not been
        pushed yet — is dropped; the queue no longer has them either.
        """
        before = len(self.in_flight)
        self.in_flight.difference_update(delivery_ids)
        self.ctx.metrics.acknowledged(before - len(self.in_flight))
        self.withdrawn.update(i for i in delivery_ids if i > self.cursor)
        self._page_in()

    def _push(
        self,
        delivery_id: int,
        encode: Callable[[], bytes],
        received: float | None = None,
        before_commit: bool = False,
        before_decision: bool = False,
    ) -> None:
        if delivery_id <= self.cursor:
            return
        self.cursor = delivery_id
        if self.withdrawn:
            self.withdrawn = {i for i in self.withdrawn if i >= self.cursor}
            if delivery_id in self.withdrawn:
                self.withdrawn.discard(delivery_id)
                return
        self.in_flight.add(delivery_id)
        if before_commit:
            self.uncommitted.add(delivery_id)
        self.session.send_encoded(encode())
        self.ctx.metrics.delivered(received, before_commit, before_decision)

    def drained(self) -> None:
        """The connection's outgoing data is down to a quarter of its bound: deliveries
        left behind while it was over are paged in."""
        self._page_in()

    def _page_in(self) -> None:
        room = self.window - len(self.in_flight)
        if (
            not self.behind
            or self.paging
            or room <= 0
            or self.session.outbox is not self
            or self.session.transport.congested
        ):
            return
        self.paging = True
        handle = self.session.handle
        assert handle is not None
        after = self.cursor
        not_before = self.ctx.clock() - self.ctx.config.queue_ttl_ms
        self.ctx.store.call(
            "page",
            (handle, after, room, not_before, self.page_bytes),
            lambda ok, value: self._paged(ok, value, room),
        )

    def _paged(self, ok: bool, value: Any, limit: int) -> None:
        self.paging = False
        if not ok:
            # Still behind. A store outage is nobody's request to answer: the catch-up
            # after the store is back pages again (``catch_up``).
            self.again = False
            if not isinstance(value, StoreUnavailable):
                self._page_failed(value)
            return
        self.ctx.guard(self.session, None, lambda: self._push_page(value, limit))

    def _page_failed(self, exc: BaseException) -> None:
        """Any other failure to read the queue (a SQLite read error) leaves nothing that
        pages again: new envelopes wait behind the cursor until an ACK or a reconnect.
        So the connection is closed with 1011, after its ERROR (SPEC §9): the client's
        next login pages from the start (found in review)."""
        self.ctx.refuse(self.session, None, exc)
        self._store_failed("page_failed")

    def _push_page(self, page: list[Any], limit: int) -> None:
        if self.session.outbox is not self or not self.session.open:
            return
        rows, high = page
        transport = self.session.transport
        for row in rows:
            if transport.congested:  # the rest waits until it drained (SPEC §1.2.4)
                self.behind = True
                self.again = False
                return
            self._push(row[0], partial(deliver_row, row))
        # A page the byte budget cut vouches for no more than a full one (``page_full``).
        full = page_full(rows, limit, self.page_bytes)
        if not full:
            self._passed(high)
        self.behind = full or self.again
        self.again = False
        self._page_in()

    def _passed(self, high: int) -> None:
        """A whole page vouched that every envelope up to ``high`` still queued was in it:
        the cursor moves there, so one that was not (acknowledged on an earlier connection,
        or withdrawn by a block or revoke that this outbox never heard of, SPEC §7.4) is
        never pushed when another worker's link or hint announces it late."""
        if high > self.cursor:
            self.cursor = high
            if self.withdrawn:
                self.withdrawn = {i for i in self.withdrawn if i >= high}
