"""STATEMENT and STATEMENTS_LIST: consent and blocks change only by signed word (SPEC §7.4–7.6).

A statement is checked in two steps. On the event loop, what needs no
stored state beyond the signer's key: the signer is the connection's account,
the signature verifies under its current identity key, ``relay_key`` is ours,
``issued_at`` within the skew (``verify_statement``). Then one store operation
(``apply_statement``) does the rest atomically with its effects:
the kinds fit (a consent statement's target is a business; a block's target
need not exist), ``(signer, nonce)`` is unseen, the transition table allows it
(``apply_statement``), and then the new pair state, the statement itself,
the purge of undelivered envelopes and the forwarded receipt are committed
together. OK goes out after that commit; purged rows are withdrawn from the
signer's outbox before it.

Not here: the rules (``blindrelay.protocol.consent``, ``.signed``, ``store.rules``),
storage (``store``), sending envelopes (``delivery``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.errors import InvalidStatement, ProtocolError, RateLimited
from blindrelay.protocol.frames import AccountKind, Ok, Statement, Statements, StatementsList
from blindrelay.protocol.signed import (
    ConsentStatement,
    reraise_as,
    unverified_body,
    verify_statement,
)

from .context import RelayContext, Session
from .delivery import push_committed
from .logs import log_event
from .outbox import deliver_row
from .store import Account


def _claimed(handle: str, data: bytes) -> None:
    """The checks of SPEC §7.4 that need no key: the statement parses and its signer
    is the connection's account (500 otherwise)."""
    try:
        claimed = unverified_body(ConsentStatement, data)
    except ProtocolError as exc:
        raise reraise_as(exc, InvalidStatement) from None
    # "…whose signer is not the connection's account…" → 500.
    if claimed.signer != handle:
        raise InvalidStatement("signer: not this connection's account")


def receive_statement(ctx: RelayContext, session: Session, frame: Statement) -> None:
    """SPEC §7.4: check, apply, purge, forward; OK "after the statement and its
    effect are committed"."""
    signer = session.account  # its kind never changes; its key is read below
    assert signer is not None
    handle = signer.handle
    now = ctx.clock()
    # Statements cost the signer's send tokens: grant/revoke churn is forwarded traffic.
    (ctx.limiters.send_business if signer.kind == AccountKind.BUSINESS
     else ctx.limiters.send_user).take(handle)  # fmt: skip
    # And a statement token (SPEC §10): each accepted statement is logged for ever (§15),
    # and block/unblock of one target changes something every time. Taken after the send
    # token, so a refusal by the send bucket never spends the scarcer one.
    ctx.limiters.statement.take(handle)
    _claimed(handle, frame.statement)
    ctx.read_account(session, frame, lambda account: _apply(ctx, session, frame, now, account))


def _apply(
    ctx: RelayContext, session: Session, frame: Statement, now: int, account: Account
) -> None:
    """STATEMENT once the signer's current key is read: verify, then ``apply_statement``."""
    handle = account.handle
    # Signature, signer_key = current key, relay_key = ours → 500; issued_at skew → 501.
    statement = verify_statement(
        frame.statement, expected_key=account.identity_key, relay_key=ctx.relay_key, now_ms=now
    )

    def applied(result: list[Any] | int) -> None:
        if isinstance(result, int):
            # The signer's budget in the store, which every relay process spends (SPEC
            # §10, T64); the process's own bucket (receive_statement) gave N processes N
            # times the statements.
            raise RateLimited("statement budget empty", retry_after_ms=result)
        purged, forwarded, superseded = result
        if session.outbox is not None and purged:
            session.outbox.withdraw(purged)
        if superseded:
            target = ctx.sessions.get(statement.target)
            if target is not None and target.outbox is not None:
                target.outbox.withdraw(superseded)
        session.send(Ok(re=frame.id))
        log_event(
            logging.INFO, "statement", handle=handle, action=statement.action,
            target=statement.target, purged=len(purged), forwarded=forwarded is not None,
        )  # fmt: skip
        if forwarded is not None:
            push_committed(  # previous unknown: the target's outbox pages
                ctx, forwarded[1], forwarded[0], partial(deliver_row, forwarded), None
            )

    config = ctx.config
    ctx.run_job(
        session, frame, "apply_statement",
        (handle, frame.statement, now, config.consent_cooldown_ms, limits.MAX_BLOCK_TARGETS,
         [config.statement_rate_per_h, config.statement_burst]),
        applied,
    )  # fmt: skip


def list_statements(ctx: RelayContext, session: Session, frame: StatementsList) -> None:
    """SPEC §7.6: the statements in force this account signed or is the target of."""
    handle = session.handle
    assert handle is not None
    ctx.limiters.statements_list.take(handle)  # SPEC §10, before any work
    after = frame.after
    limit = limits.MAX_LISTED_STATEMENTS

    def listed(result: list[Any]) -> None:
        items, cursor = result
        session.send(Statements(re=frame.id, statements=tuple(items), next=cursor))

    ctx.run_job(session, frame, "statements_in_force", (handle, after, limit), listed)
