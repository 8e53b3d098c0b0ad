"""Store-and-forward: SEND → durable queue → DELIVER → ACK (SPEC §6).

- Every refusal rule of a SEND is in :func:`check_send` (who may send what to
  whom, and how fast). The two rules that must be atomic with the insert —
  idempotence by (sender, msg_id) and the per-recipient queue cap — are
  enforced inside the storage job (``MessageQueue.enqueue``).
- SENT goes out only from the writer job's completion, i.e. after commit.
- An :class:`Outbox` per authenticated connection pushes envelopes in
  delivery-id order with at most ``delivery_window`` unacknowledged; whatever
  it cannot push at once stays in the queue and is paged in as ACKs arrive.
  Unacknowledged rows stay in the queue, so a new connection gets them again.

Not here: consent and blocking (a later ``may_deliver`` in ``protocol``,
called from :func:`check_send`), storage details (``storage``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from blindrelay.protocol.errors import Forbidden, RecipientUnavailable
from blindrelay.protocol.frames import AccountKind, Ack, Deliver, Intent, Send, Sent

from .context import Limiters, RelayContext, Session
from .logs import log_event
from .storage import Accepted, Account, QueuedEnvelope, Store

BUSINESS_ONLY_INTENTS = frozenset({Intent.NOTIFICATION, Intent.CONSENT_REQUEST})
"""SPEC §6.2: intents only a business account may declare."""


def check_send(sender: Account, recipient: Account | None, frame: Send, limiters: Limiters) -> None:
    """Every refusal of SEND before storage, in order (SPEC §6.2, §10).

    1. FORBIDDEN: a user account declaring a business-only intent;
    2. RATE_LIMITED by the sender's account bucket (before the recipient is
       looked at, so probing handles costs tokens too);
    3. RECIPIENT_UNAVAILABLE: no such account (later also: no consent,
       blocked — one code, so no existence or block oracle);
    4. RATE_LIMITED by the sender→recipient pair bucket.
    """
    if sender.kind == AccountKind.USER and frame.intent in BUSINESS_ONLY_INTENTS:
        raise Forbidden()
    account_buckets = (
        limiters.send_business if sender.kind == AccountKind.BUSINESS else limiters.send_user
    )
    account_buckets.take(sender.handle)
    if recipient is None:
        raise RecipientUnavailable()
    limiters.send_pair.take((sender.handle, recipient.handle))


def envelope_digest(frame: Send) -> bytes:
    """What makes two SENDs with one msg_id "the same" (SPEC §6.3): to, intent,
    category(ies) and body, length-prefixed so no two field lists collide."""
    digest = hashlib.sha256(b"blindrelay/v1/envelope\x00")
    categories = ",".join(frame.categories) if frame.categories is not None else ""
    for part in (
        frame.to.encode(),
        frame.intent.encode(),
        (frame.category or "").encode(),
        categories.encode(),
        frame.body,
    ):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


def send(ctx: RelayContext, session: Session, frame: Send) -> None:
    """SPEC §6.1–6.3: check, commit, then SENT; then DELIVER if the recipient is online."""
    handle = session.handle
    assert handle is not None
    sender = ctx.accounts.get(handle)
    assert sender is not None
    recipient = ctx.accounts.get(frame.to)
    check_send(sender, recipient, frame, ctx.limiters)
    now = ctx.clock()
    digest = envelope_digest(frame)
    cap = ctx.config.queue_cap

    def enqueue(store: Store) -> Accepted:
        return store.queue.enqueue(
            frame.to, sender, frame.msg_id, frame.intent, frame.category, frame.categories,
            frame.body, digest, now, cap,
        )  # fmt: skip

    def committed(accepted: Accepted) -> None:
        # "The relay MUST NOT send SENT before the envelope is committed to disk."
        session.send(Sent(re=frame.id, msg_id=frame.msg_id, at=accepted.at))
        log_event(
            logging.DEBUG, "sent", handle=handle, to=frame.to, size=len(frame.body),
            intent=frame.intent, resend=accepted.envelope is None,
        )  # fmt: skip
        if accepted.envelope is not None:
            target = ctx.sessions.get(frame.to)
            if target is not None and target.outbox is not None:
                target.outbox.committed(accepted.envelope)

    ctx.complete(session, frame, ctx.writer.submit(enqueue), committed)


def acknowledge(ctx: RelayContext, session: Session, frame: Ack) -> None:
    """SPEC §6.5: delete acknowledged rows of this account; no response on success.

    Ids of other accounts' rows, or already deleted ones, are ignored silently.
    """
    handle = session.handle
    assert handle is not None
    ids = frame.delivery_ids
    future = ctx.writer.submit(lambda store: store.queue.acknowledge(handle, ids))
    ctx.complete(
        session,
        frame,
        future,
        lambda deleted: log_event(
            logging.DEBUG, "acked", handle=handle, ids=len(ids), deleted=deleted
        ),
    )
    if session.outbox is not None:
        session.outbox.acknowledged(ids)


def to_deliver(envelope: QueuedEnvelope) -> Deliver:
    return Deliver(
        delivery_id=envelope.delivery_id,
        sender=envelope.sender,
        sender_kind=envelope.sender_kind,
        msg_id=envelope.msg_id,
        intent=envelope.intent,
        sent_at=envelope.sent_at,
        body=envelope.body,
        category=envelope.category,
        categories=envelope.categories,
    )


class Outbox:
    """Deliveries of one authenticated connection (SPEC §6.4).

    Invariants: every envelope pushed has a delivery id greater than
    ``cursor`` at that moment, so order is delivery-id order and nothing is
    pushed twice on one connection; at most ``window`` are unacknowledged.

    ``behind`` means the queue may hold rows past ``cursor`` that were not
    pushed (the window was full, or the connection is new); they are paged
    in by a writer job. Writer results arrive in submission order, so a
    commit whose callback arrives while a page is being read was committed
    before that read and is in it (or beyond its limit, which sets ``behind``).
    """

    def __init__(self, ctx: RelayContext, session: Session) -> None:
        self.ctx = ctx
        self.session = session
        self.window = ctx.config.delivery_window
        self.in_flight: set[int] = set()
        self.cursor = 0
        self.behind = True
        self.paging = False

    def start(self) -> None:
        """A new connection: everything queued is due, unacknowledged ones again."""
        self._page_in()

    def committed(self, envelope: QueuedEnvelope) -> None:
        """A new envelope for this account was committed."""
        if self.paging or self.behind:
            return
        if len(self.in_flight) >= self.window:
            self.behind = True
            return
        self._push(envelope)

    def acknowledged(self, delivery_ids: tuple[int, ...]) -> None:
        self.in_flight.difference_update(delivery_ids)
        self._page_in()

    def _push(self, envelope: QueuedEnvelope) -> None:
        if envelope.delivery_id <= self.cursor:
            return
        self.cursor = envelope.delivery_id
        self.in_flight.add(envelope.delivery_id)
        self.session.send(to_deliver(envelope))

    def _page_in(self) -> None:
        room = self.window - len(self.in_flight)
        if not self.behind or self.paging or room <= 0 or self.session.outbox is not self:
            return
        self.paging = True
        handle = self.session.handle
        assert handle is not None
        after = self.cursor
        not_before = self.ctx.clock() - self.ctx.config.queue_ttl_ms
        future = self.ctx.writer.submit(
            lambda store: store.queue.page(handle, after, room, not_before)
        )
        future.add_done_callback(lambda fut: self._paged(fut, room))

    def _paged(self, future: asyncio.Future[list[QueuedEnvelope]], limit: int) -> None:
        self.paging = False
        if future.cancelled():
            return
        if future.exception() is not None:
            self.ctx.refuse(self.session, None, future.exception() or Exception())
            return
        self.ctx.guard(self.session, None, lambda: self._push_page(future.result(), limit))

    def _push_page(self, envelopes: list[QueuedEnvelope], limit: int) -> None:
        if self.session.outbox is not self or not self.session.open:
            return
        for envelope in envelopes:
            self._push(envelope)
        self.behind = len(envelopes) >= limit
        self._page_in()
