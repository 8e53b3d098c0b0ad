"""Store-and-forward: SEND → durable queue → DELIVER → ACK (SPEC §6), under consent (§7.3).

- Refusals that need no stored state (kind, rate limits) are in
  :func:`check_send`, before storage. Everything that depends on the pair —
  consent, blocks, the customer-service window (SPEC §7.3) — is decided by
  ``may_deliver`` *inside the writer job* that enqueues (:func:`decide`), so
  a statement acknowledged before a SEND is always seen by it, and the
  window, pending request and metering counts it changes are committed with
  the envelope. Idempotence and the queue cap are enforced in the same job.
- SENT goes out only from the writer job's completion, i.e. after commit.
- An :class:`Outbox` per authenticated connection pushes envelopes in
  delivery-id order with at most ``delivery_window`` unacknowledged; whatever
  it cannot push at once stays in the queue and is paged in as ACKs arrive.
  Unacknowledged rows stay in the queue, so a new connection gets them again.

Not here: the rules themselves (``blindrelay.protocol.consent``), statements
(``statements``), storage details (``storage``, ``ledger``, ``metering``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from blindrelay.protocol.consent import (
    REFUSE,
    Decision,
    PairState,
    Request,
    Verdict,
    after_accept,
    may_deliver,
)
from blindrelay.protocol.errors import Forbidden, RecipientUnavailable
from blindrelay.protocol.frames import AccountKind, Ack, Deliver, Intent, Send, Sent

from .context import Limiters, RelayContext, Session
from .logs import log_event
from .storage import Accepted, Account, QueuedEnvelope, Store

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

    Consent, blocks and existence are decided in the writer job (:func:`decide`).
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


def decide(
    store: Store,
    sender: Account,
    to: str,
    request: Request,
    now: int,
    *,
    category: str | None = None,
    categories: frozenset[str] = frozenset(),
) -> tuple[Account | None, PairState, Decision]:
    """SPEC §7.3 inside a writer job: the recipient, the pair's state, the verdict.

    "The relay MUST do the same work (one lookup of the pair state, including
    for an unknown account) before answering": the pair state is read before
    the recipient's existence is looked at.
    """
    state = store.ledger.pair_state(sender.handle, to)
    recipient = store.accounts.get(to)
    if recipient is None:
        return None, state, REFUSE
    decision = may_deliver(
        sender_kind=sender.kind, recipient_kind=recipient.kind, request=request, state=state,
        now=now, category=category, categories=categories,
    )  # fmt: skip
    return recipient, state, decision


def refuse_unless_allowed(decision: Decision) -> None:
    """SPEC §7.7: every pair-dependent refusal is the one bare ERROR 400."""
    if decision.verdict is Verdict.FORBIDDEN:
        raise Forbidden()
    if decision.verdict is not Verdict.ALLOW:
        raise RecipientUnavailable()


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
    """SPEC §6.1–6.3, §7.3, §8.4: check, decide and commit, then SENT; then DELIVER."""
    sender = session.account
    assert sender is not None
    handle = sender.handle
    check_send(sender, frame, ctx.limiters)
    now = ctx.clock()
    digest = envelope_digest(frame)
    cap = ctx.config.queue_cap
    window_ms = ctx.config.service_window_ms
    request = Request(frame.intent)
    asked = frozenset(frame.categories or ())

    def enqueue(store: Store) -> Accepted:
        # A resend is answered from memory: it was decided, enqueued and
        # counted once already ("an idempotent resend counts once").
        resend = store.queue.remembered(handle, frame.msg_id, digest)
        if resend is not None:
            return resend
        recipient, state, decision = decide(
            store, sender, frame.to, request, now, category=frame.category, categories=asked
        )
        refuse_unless_allowed(decision)
        assert recipient is not None
        accepted = store.queue.add(
            frame.to, sender, frame.msg_id, frame.intent, frame.category, frame.categories,
            frame.body, digest, now, cap,
        )  # fmt: skip
        new_state = after_accept(state, decision, now, window_ms)
        if new_state != state:
            store.ledger.store_pair(handle, frame.to, new_state)
        if decision.meter is not None:
            # "Counts MUST be committed in the same transaction as the envelope they count."
            business = sender if sender.kind == AccountKind.BUSINESS else recipient
            store.usage.count(business.handle, now, decision.meter, frame.category)
        return accepted

    def committed(accepted: Accepted) -> None:
        # "The relay MUST NOT send SENT before the envelope is committed to disk."
        session.send(Sent(re=frame.id, msg_id=frame.msg_id, at=accepted.at))
        log_event(
            logging.DEBUG, "sent", handle=handle, to=frame.to, size=len(frame.body),
            intent=frame.intent, resend=accepted.envelope is None,
        )  # fmt: skip
        if accepted.envelope is not None:
            push_committed(ctx, accepted.envelope)

    ctx.complete(session, frame, ctx.writer.submit(enqueue), committed)


def push_committed(ctx: RelayContext, envelope: QueuedEnvelope) -> None:
    """Hand a freshly committed envelope to its recipient's outbox, if online."""
    target = ctx.sessions.get(envelope.recipient)
    if target is not None and target.outbox is not None:
        target.outbox.committed(envelope)


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
        self.withdrawn: set[int] = set()
        """Delivery ids above ``cursor`` purged by a statement: never pushed (SPEC §7.4)."""

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

    def withdraw(self, delivery_ids: list[int]) -> None:
        """Rows a block or revoke purged (SPEC §7.4).

        "From the OK on, the relay MUST NOT deliver anything the new state
        refuses, including envelopes that were queued before": whatever this
        outbox holds of them — in flight, or read by a page that has not been
        pushed yet — is dropped; the queue no longer has them either.
        """
        self.in_flight.difference_update(delivery_ids)
        self.withdrawn.update(i for i in delivery_ids if i > self.cursor)
        self._page_in()

    def _push(self, envelope: QueuedEnvelope) -> None:
        if envelope.delivery_id <= self.cursor:
            return
        self.cursor = envelope.delivery_id
        if self.withdrawn:
            self.withdrawn = {i for i in self.withdrawn if i >= self.cursor}
            if envelope.delivery_id in self.withdrawn:
                self.withdrawn.discard(envelope.delivery_id)
                return
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
