"""Store-and-forward: SEND → durable queue → DELIVER → ACK (SPEC §6), under consent (§7.3).

- Refusals that need no stored state (kind, rate limits) are in
  :func:`check_send`, before storage. Everything that depends on the pair —
  consent, blocks, the customer-service window (SPEC §7.3) — is decided by
  ``may_deliver`` *inside the store operation* that enqueues (``send``), so
  a statement acknowledged before a SEND is always seen by it, and the
  window, pending request and metering counts it changes are committed with
  the envelope. Idempotence and the queue cap are enforced in the same job.
- SENT goes out only from the operation's completion, i.e. after commit.
- An outbox per authenticated connection (``outbox.Outbox``) pushes envelopes
  in delivery-id order; here is what tells it of new envelopes, from this
  process's store or from other workers.

Not here: the rules themselves (``blindrelay.protocol.consent``), statements
(``statements``), the store and the rules it applies (``store``, ``store.rules``),
the per-connection outbox (``outbox``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from blindrelay.protocol.errors import Forbidden, MessageIdReused
from blindrelay.protocol.fastcodec import encode_deliver, encode_sent
from blindrelay.protocol.frames import AccountKind, Ack, Intent, Send

from .config import RelayConfig
from .context import RelayContext, Session, SessionOutbox
from .limiters import Limiters
from .logs import LOGGER, log_event
from .outbox import delete_acknowledged, deliver_row
from .routing import Hint
from .store import Account
from .store.leases import LEASED, PUSHED
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
    the commit too (``outbox.Outbox.held_until_committed``); and if the commit fails, the
    recipient's connection is closed, so nothing it was told outlives the failure.
    """
    metrics = ctx.metrics
    received = metrics.now()
    sender = session.account
    assert sender is not None
    handle = sender.handle
    check_send(sender, frame, ctx.limiters)
    now = ctx.clock()
    early: int | None = None
    """The delivery id pushed before the commit; at the commit it is confirmed, or on
    failure withdrawn, never pushed again."""
    told: SessionOutbox | None = None
    """The recipient's outbox told of it then (if it was online): its ACK waits there for
    the commit, even if that connection has ended since."""

    def encoder(delivery_id: int, at: int) -> Callable[[], bytes]:
        def encode() -> bytes:
            return encode_deliver(
                delivery_id, handle, sender.kind, frame.msg_id, frame.intent, at, frame.body,
                frame.category, frame.categories,
            )  # fmt: skip

        return encode

    args: tuple[Any, ...] = (
        handle, sender.kind, frame.to, frame.msg_id, frame.intent, frame.category,
        frame.categories, frame.body, now, send_rules(ctx.config),
    )  # fmt: skip
    ticket = ctx.store.lease_send(handle, frame.to, frame.msg_id)
    if ticket is not None:
        # SPEC §6.4.6: a lease says the store will allow it; pushed now if the outbox can.
        if ticket[1] == PUSHED:
            target = ctx.sessions.get(frame.to)
            outbox = target.outbox if target is not None else None
            if outbox is not None and outbox.push_ahead(
                ticket[0], encoder(ticket[0], now), received
            ):
                early, told = ticket[0], outbox
            else:
                ticket[1] = LEASED
        args = (*args, ticket)

    def decided(result: Any) -> None:
        nonlocal early, told
        if type(result) is int or early is not None:  # a resend, or pushed already
            return
        early = result[0]
        target = ctx.sessions.get(frame.to)
        if target is not None and target.outbox is not None:
            told = target.outbox
            told.decided(result[0], encoder(result[0], result[1]), result[2], received)

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
            if told is not None and early is not None:  # pushed first (SPEC §6.4.6)
                told.withdrawn_early(early)
        elif early is not None:
            if told is not None:
                told.confirmed(early)
        else:
            push_committed(ctx, frame.to, result[0], encoder(result[0], at), result[2], received)

    def failed(error: BaseException) -> None:
        if told is None or early is None:
            return
        if isinstance(error, MessageIdReused):  # SPEC §6.4.6: pushed first, never stored
            told.withdrawn_early(early)
        else:  # told, and not committed after all
            told.commit_failed(early)

    handed = metrics.now()
    ctx.run_job(session, frame, "send", args, committed, decided, failed)


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
