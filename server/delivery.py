"""Store-and-forward: SEND → durable queue → DELIVER → ACK (SPEC §6), under consent (§7.3).

- Refusals that need no stored state (kind, rate limits) are in
  :func:`check_send`, before storage. Everything that depends on the pair —
  consent, blocks, the customer-service window (SPEC §7.3) — is decided by
  ``may_deliver`` *inside the store operation* that enqueues (``send``), so
  a statement acknowledged before a SEND is always seen by it, and the
  window, pending request and metering counts it changes are committed with
  the envelope. Idempotence and the queue cap are enforced in the same job.
- SENT goes out only from the operation's completion, i.e. after commit.
- An :class:`Outbox` per authenticated connection pushes envelopes in
  delivery-id order with at most ``delivery_window`` unacknowledged; whatever
  it cannot push at once stays in the queue and is paged in as ACKs arrive.
  Unacknowledged rows stay in the queue, so a new connection gets them again.

Not here: the rules themselves (``blindrelay.protocol.consent``), statements
(``statements``), the store and the rules it applies (``store``, ``store.rules``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from blindrelay.protocol.errors import Forbidden, StoreUnavailable
from blindrelay.protocol.fastcodec import encode_deliver, encode_sent
from blindrelay.protocol.frames import AccountKind, Ack, Intent, Send

from .config import RelayConfig
from .context import CLOSE_STORE_FAILED, Limiters, RelayContext, Session, SessionOutbox
from .logs import LOGGER, log_event
from .routing import Hint
from .store import Account
from .store.operations import SendRules

BUSINESS_ONLY_INTENTS = frozenset({Intent.NOTIFICATION, Intent.CONSENT_REQUEST})
"""SPEC §6.2: intents only a business account may declare."""


def check_send(sender: Account, frame: Send, limiters: Limiters) -> None:
    """Every refusal of SEND that needs no stored state, in order (SPEC §6.2, §7.3, §10).

    1. FORBIDDEN: a user account declaring a business-only intent;
    2. RATE_LIMITED by the sender's account bucket (before the recipient is
       looked at, so probing handles costs tokens too);
    3. RATE_LIMITED by the business's consent-request bucket ("requests are
       rate-limited per business");
    4. RATE_LIMITED by the sender→``to`` pair bucket — taken whether or not
       ``to`` exists: a bucket kept only for real recipients would run dry
       only for them, an existence oracle (SPEC §7.7).

    Consent, blocks and existence are decided in the store (``store.rules.judge_send``).
    """
    if sender.kind == AccountKind.USER and frame.intent in BUSINESS_ONLY_INTENTS:
        raise Forbidden()
    account_buckets = (
        limiters.send_business if sender.kind == AccountKind.BUSINESS else limiters.send_user
    )
    account_buckets.take(sender.handle)
    if frame.intent == Intent.CONSENT_REQUEST:
        limiters.consent_request.take(sender.handle)
    limiters.send_pair.take((sender.handle, frame.to))


def send(ctx: RelayContext, session: Session, frame: Send) -> None:
    """SPEC §6.1–6.4, §7.3, §8.4: check here, decide and commit in the store
    (operation ``send``); DELIVER to an online recipient once decided, SENT once
    committed.

    A back end that reports the decision before its commit (SQLite: ``decided``)
    lets the DELIVER leave while the commit is in flight, so the recipient does not
    wait for the fsync (issue 19). What keeps that safe (SPEC §6.4.5): SENT still waits
    for the commit, so a relay that dies first leaves a sender that resends and a
    recipient that drops the duplicate by msg_id; the recipient's ACK of it waits for
    the commit too (:meth:`Outbox.held_until_committed`); and if the commit fails, the
    recipient's connection is closed, so nothing it was told outlives the failure.
    """
    metrics = ctx.metrics
    received = metrics.now()
    sender = session.account
    assert sender is not None
    handle = sender.handle
    check_send(sender, frame, ctx.limiters)
    early: int | None = None
    """The delivery id decided before the commit (its recipient's outbox, if online, was
    told then; at the commit it is confirmed, or on failure withdrawn, not pushed)."""

    def encoder(delivery_id: int, at: int) -> Callable[[], bytes]:
        def encode() -> bytes:
            return encode_deliver(
                delivery_id, handle, sender.kind, frame.msg_id, frame.intent, at, frame.body,
                frame.category, frame.categories,
            )  # fmt: skip

        return encode

    def decided(result: Any) -> None:
        nonlocal early
        if type(result) is int:  # an idempotent resend: delivered already, or queued
            return
        early = result[0]
        target = ctx.sessions.get(frame.to)
        if target is not None and target.outbox is not None:
            target.outbox.decided(result[0], encoder(result[0], result[1]), result[2], received)

    def committed(result: Any) -> None:
        # "The relay MUST NOT send SENT before the envelope is committed to disk."
        answered = metrics.now()
        resend = type(result) is int  # an idempotent resend: its original time
        at: int = result if resend else result[1]
        session.send_encoded(encode_sent(frame.id, frame.msg_id, at))
        metrics.send_answered(received, handed, answered)
        if LOGGER.isEnabledFor(logging.DEBUG):
            log_event(
                logging.DEBUG, "sent", handle=handle, to=frame.to, size=len(frame.body),
                intent=frame.intent, resend=resend,
            )  # fmt: skip
        if resend:
            # Its first commit may have lost its answer (a store outage, SPEC §6.3):
            # the recipient's pager looks again rather than wait for its next login.
            page_again(ctx, frame.to)
        elif early is not None:
            _to_outbox(ctx, frame.to, lambda outbox: outbox.confirmed(early))
        else:
            push_committed(ctx, frame.to, result[0], encoder(result[0], at), result[2], received)

    def done(ok: bool, value: Any) -> None:
        if not ok:
            if early is not None:  # told to the recipient, and not committed after all
                _to_outbox(ctx, frame.to, lambda outbox: outbox.commit_failed(early))
            ctx.refuse(session, frame, value)
            return
        try:
            committed(value)
        except Exception as exc:
            ctx.refuse(session, frame, exc)

    handed = metrics.now()
    ctx.store.call(
        "send",
        (handle, sender.kind, frame.to, frame.msg_id, frame.intent, frame.category,
         frame.categories, frame.body, ctx.clock(), send_rules(ctx.config)),
        done, decided,
    )  # fmt: skip


def _to_outbox(ctx: RelayContext, recipient: str, act: Callable[[SessionOutbox], None]) -> None:
    target = ctx.sessions.get(recipient)
    if target is not None and target.outbox is not None:
        act(target.outbox)


_made: tuple[RelayConfig, SendRules] | None = None


def send_rules(config: RelayConfig) -> SendRules:
    """The limits every SEND job applies, made once per configuration (SPEC §10).

    Remembered by identity: hashing the configuration (as ``functools.cache``
    would) cost a microsecond of the event loop per SEND.
    """
    global _made
    made = _made
    if made is not None and made[0] is config:
        return made[1]
    rules = SendRules(
        queue_cap=config.queue_cap,
        service_window_ms=config.service_window_ms,
        queue_share_per_sender=config.queue_share_per_sender,
        queue_share_strangers=config.queue_share_strangers,
        message_request_max=config.message_request_max,
        first_contacts_per_h=config.first_contacts_per_h,
        first_contacts_burst=config.first_contacts_burst,
    )
    _made = (config, rules)
    return rules


def deliver_row(row: list[Any]) -> bytes:
    """The DELIVER of a queue row as the store returns it (``store.envelope_row``):
    encoded straight from values that were checked when their SEND was decoded."""
    return encode_deliver(row[0], row[2], row[3], row[4], row[5], row[8], row[9], row[6], row[7])


def push_committed(
    ctx: RelayContext,
    recipient: str,
    delivery_id: int,
    encode: Callable[[], bytes],
    previous: int | None,
    received: float | None = None,
) -> None:
    """Hand a freshly committed envelope to its recipient's outbox, if online.

    ``encode`` makes its DELIVER bytes, only if it is pushed now; ``previous`` is
    the highest delivery id queued for the recipient before it (None: unknown);
    ``received``: when its SEND arrived here (``RelayMetrics.now``), for the metrics."""
    target = ctx.sessions.get(recipient)
    if target is not None and target.outbox is not None:
        target.outbox.committed(delivery_id, encode, previous, received)


def page_again(ctx: RelayContext, recipient: str) -> None:
    """The recipient's queue may hold rows its outbox was not told of: page it."""
    target = ctx.sessions.get(recipient)
    if target is not None and target.outbox is not None:
        target.outbox.page_again()


def queued_elsewhere(ctx: RelayContext, recipient: str) -> None:
    """A QUEUED hint: another worker committed rows to ``recipient``'s queue (or hints
    were lost): its outbox here, if it has one, pages them in."""
    target = ctx.sessions.get(recipient)
    if target is not None and target.outbox is not None:
        target.outbox.queued_elsewhere()


def committed_elsewhere(ctx: RelayContext, hint: Hint) -> None:
    """An ENVELOPE hint: another worker committed this envelope for ``hint.handle``.

    Pushed like a local commit when the outbox is up to date (not paging, nothing
    behind, and every lower id seen); otherwise paged, as for a QUEUED hint — a page
    being read now may have been read before this commit, which happened elsewhere.
    """
    outbox = _pushable(ctx, hint.handle, hint.value)
    if outbox is not None:
        row = hint.row()
        outbox.committed(row[0], partial(deliver_row, row), hint.value)


def delivered_elsewhere(ctx: RelayContext, hint: Hint) -> None:
    """A DELIVER by peer link: another worker committed this envelope for ``hint.handle``
    and sent its DELIVER frame as is (``routing_links``). The same rule as
    :func:`committed_elsewhere`; a withdrawal heard before it keeps it from being pushed
    (``Outbox.withdraw``), one heard after it comes after the push, as it would here."""
    outbox = _pushable(ctx, hint.handle, hint.value)
    if outbox is not None:
        data = hint.envelope
        outbox.committed(hint.ids[0], lambda: data, hint.value)


def _pushable(ctx: RelayContext, recipient: str, previous: int) -> SessionOutbox | None:
    """``recipient``'s outbox here if an envelope committed elsewhere after ``previous``
    may be pushed to it now; None if it has none, or if it must page instead (and
    then it pages)."""
    target = ctx.sessions.get(recipient)
    if target is None or target.outbox is None:
        return None
    outbox = target.outbox
    if not outbox.up_to(previous):
        outbox.queued_elsewhere()
        return None
    return outbox


def withdrawn_elsewhere(ctx: RelayContext, recipient: str, delivery_ids: tuple[int, ...]) -> None:
    """A WITHDRAWN hint: a statement committed on another worker purged these rows of
    ``recipient``'s queue (SPEC §7.4): its outbox here never pushes them."""
    target = ctx.sessions.get(recipient)
    if target is not None and target.outbox is not None:
        target.outbox.withdraw(list(delivery_ids))


def catch_up(ctx: RelayContext) -> None:
    """Hints may have been lost (the router or the store reconnected): every outbox
    here pages its queue again; the tables are the truth."""
    for session in ctx.sessions.all():
        if session.outbox is not None:
            session.outbox.queued_elsewhere()


def acknowledge(ctx: RelayContext, session: Session, frame: Ack) -> None:
    """SPEC §6.5: delete acknowledged rows of this account; no response on success.

    Only ids this connection has in flight are acted on; any other id (another
    account's, already deleted, or delivered on an earlier connection, which
    delivers it again) is ignored without work — so ACKs cost the store at most
    one deletion per delivery, and need no rate limit (SPEC §10).
    """
    handle = session.handle
    assert handle is not None
    outbox = session.outbox
    if outbox is None:
        return
    ids = outbox.in_flight_of(frame.delivery_ids)
    if not ids:
        return
    ready = outbox.held_until_committed(ids)
    if ready:
        delete_acknowledged(ctx, session, ready)
    outbox.acknowledged(ids)


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

    def confirmed(self, delivery_id: int) -> None:
        """The envelope pushed by :meth:`decided` is committed: an ACK of it held
        meanwhile deletes it now."""
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
        session = self.session
        self.close()
        session.outbox = None
        session.ended = True
        session.transport.close(CLOSE_STORE_FAILED, "store failed")
        log_event(logging.WARNING, "deliver_uncommitted", handle=session.handle)

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
        if len(self.in_flight) >= self.window:
            self.behind = True
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
        self.uncommitted = set()
        self.acks_waiting = set()

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
        self.ctx.metrics.delivered(received, before_commit)

    def _page_in(self) -> None:
        room = self.window - len(self.in_flight)
        if not self.behind or self.paging or room <= 0 or self.session.outbox is not self:
            return
        self.paging = True
        handle = self.session.handle
        assert handle is not None
        after = self.cursor
        not_before = self.ctx.clock() - self.ctx.config.queue_ttl_ms
        self.ctx.store.call(
            "page",
            (handle, after, room, not_before),
            lambda ok, value: self._paged(ok, value, room),
        )

    def _paged(self, ok: bool, value: Any, limit: int) -> None:
        self.paging = False
        if not ok:
            # Still behind. A store outage is nobody's request to answer: the catch-up
            # after the store is back pages again (``catch_up``).
            self.again = False
            if not isinstance(value, StoreUnavailable):
                self.ctx.refuse(self.session, None, value)
            return
        self.ctx.guard(self.session, None, lambda: self._push_page(value, limit))

    def _push_page(self, rows: list[list[Any]], limit: int) -> None:
        if self.session.outbox is not self or not self.session.open:
            return
        for row in rows:
            self._push(row[0], partial(deliver_row, row))
        self.behind = len(rows) >= limit or self.again
        self.again = False
        self._page_in()
