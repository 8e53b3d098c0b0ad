"""STATEMENT and STATEMENTS_LIST: consent and blocks change only by signed word (SPEC §7.4–7.6).

A statement is checked in two steps. On the event loop, what needs no
stored state beyond the signer's key: the signer is the connection's account,
the signature verifies under its current identity key, ``relay_key`` is ours,
``issued_at`` within the skew (``verify_statement``). Then one writer job
does the rest atomically with its effects: the target exists, the kinds fit,
``(signer, nonce)`` is unseen, the transition table allows it
(``apply_statement``), and then the new pair state, the statement itself,
the purge of undelivered envelopes and the forwarded receipt are committed
together. OK goes out after that commit; purged rows are withdrawn from the
signer's outbox before it.

Not here: the rules (``blindrelay.protocol.consent``, ``.signed``), storage
(``ledger``), sending envelopes (``delivery``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from blindrelay.protocol import limits
from blindrelay.protocol.consent import apply_statement
from blindrelay.protocol.errors import (
    InvalidStatement,
    ProtocolError,
    RecipientUnavailable,
    StaleStatement,
)
from blindrelay.protocol.frames import AccountKind, Ok, Statement, Statements, StatementsList
from blindrelay.protocol.signed import (
    Action,
    ConsentStatement,
    check_statement_kinds,
    reraise_as,
    unverified_body,
    verify_statement,
)

from .context import RelayContext, Session
from .delivery import push_committed
from .logs import log_event
from .storage import QueuedEnvelope, Store

FORWARDED_ACTIONS = frozenset({Action.GRANT, Action.DENY, Action.REVOKE})
"""SPEC §7.5: always forwarded to the target (a business); blocks and unblocks
only when the target is a business."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What a committed statement changed outside the ledger."""

    purged: list[int]
    forwarded: QueuedEnvelope | None


def _opened(ctx: RelayContext, handle: str, data: bytes, now: int) -> ConsentStatement:
    """The stateless checks of SPEC §7.4, each failure with its code (500 or 501)."""
    try:
        claimed = unverified_body(ConsentStatement, data)
    except ProtocolError as exc:
        raise reraise_as(exc, InvalidStatement) from None
    # "…whose signer is not the connection's account…" → 500.
    if claimed.signer != handle:
        raise InvalidStatement("signer: not this connection's account")
    account = ctx.accounts.get(handle)
    assert account is not None
    # Signature, signer_key = current key, relay_key = ours → 500; issued_at skew → 501.
    return verify_statement(
        data, expected_key=account.identity_key, relay_key=ctx.relay_key, now_ms=now
    )


def receive_statement(ctx: RelayContext, session: Session, frame: Statement) -> None:
    """SPEC §7.4: check, apply, purge, forward; OK "after the statement and its
    effect are committed"."""
    handle = session.handle
    assert handle is not None
    now = ctx.clock()
    signer = ctx.accounts.get(handle)
    assert signer is not None
    # Statements cost the signer's send tokens: grant/revoke churn is forwarded traffic.
    (ctx.limiters.send_business if signer.kind == AccountKind.BUSINESS
     else ctx.limiters.send_user).take(handle)  # fmt: skip
    statement = _opened(ctx, handle, frame.statement, now)
    cooldown_ms = ctx.config.consent_cooldown_ms

    def apply(store: Store) -> Applied:
        current = store.accounts.get(handle)
        if current is None or current.identity_key != statement.signer_key:
            raise InvalidStatement("signer_key: identity key rotated")
        target = store.accounts.get(statement.target)
        if target is None:
            raise RecipientUnavailable()  # "An unknown target gets ERROR 400."
        check_statement_kinds(statement, current.kind, target.kind)
        # "…or whose (signer, nonce) it has seen before" → 501.
        if store.ledger.seen(handle, statement.nonce):
            raise StaleStatement("nonce: statement seen before")
        action = Action(statement.action)
        state = store.ledger.pair_state(handle, target.handle)
        new_state, purge = apply_statement(
            state,
            action=action,
            signer=handle,
            categories=frozenset(statement.categories or ()),
            signer_is_user_blocking_business=(
                action is Action.BLOCK
                and current.kind == AccountKind.USER
                and target.kind == AccountKind.BUSINESS
            ),
            now=now,
            cooldown_ms=cooldown_ms,
        )  # raises InvalidStatement (500) where the transition table has no entry
        store.ledger.store_pair(handle, target.handle, new_state)
        store.ledger.record(statement, frame.statement, now)
        purged: list[int] = []
        if purge.everything_from_target:
            purged = store.queue.withdraw(handle, target.handle, None)
        elif purge.notification_categories:
            purged = store.queue.withdraw(handle, target.handle, purge.notification_categories)
        forwarded = None
        # SPEC §7.5; never while the target blocks the signer ("nothing from the
        # blocked account reaches the blocker").
        if (
            action in FORWARDED_ACTIONS or target.kind == AccountKind.BUSINESS
        ) and target.handle not in new_state.blockers:
            forwarded = store.queue.enqueue_statement(
                target.handle, current, statement.nonce, frame.statement, now
            )
        return Applied(purged, forwarded)

    def applied(result: Applied) -> None:
        if session.outbox is not None and result.purged:
            session.outbox.withdraw(result.purged)
        session.send(Ok(re=frame.id))
        log_event(
            logging.INFO, "statement", handle=handle, action=statement.action,
            target=statement.target, purged=len(result.purged),
            forwarded=result.forwarded is not None,
        )  # fmt: skip
        if result.forwarded is not None:
            push_committed(ctx, result.forwarded)

    ctx.complete(session, frame, ctx.writer.submit(apply), applied)


def list_statements(ctx: RelayContext, session: Session, frame: StatementsList) -> None:
    """SPEC §7.6: the statements in force this account signed or is the target of."""
    handle = session.handle
    assert handle is not None
    after = frame.after
    limit = limits.MAX_LISTED_STATEMENTS

    def listed(result: tuple[list[bytes], int | None]) -> None:
        items, cursor = result
        session.send(Statements(re=frame.id, statements=tuple(items), next=cursor))

    future = ctx.writer.submit(lambda store: store.ledger.in_force(handle, after, limit))
    ctx.complete(session, frame, future, listed)
