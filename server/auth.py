"""Registration, login and identity rotation: who a connection is (SPEC §3.4, §4).

The proofs themselves are checked by the sans-I/O ``RelayConnection``
(challenge freshness, single use, relay binding, signature); this module looks
up and stores accounts, sends WELCOME, and makes the new session the account's
only live one. A connection acts only as the handle its WELCOME named: every
later handler takes the handle from the connection, never from a frame.

Not here: prekeys (``directory``), messages (``delivery``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.crypto.keys import signature_valid
from blindrelay.protocol.errors import (
    InvalidStatement,
    MalformedFrame,
    RegistrationRefused,
    StaleStatement,
)
from blindrelay.protocol.frames import Frame, Login, Ok, Register, RotateIdentity, Welcome
from blindrelay.protocol.transcripts import rotate_transcript

from .context import RelayContext, Session
from .logs import log_event
from .outbox import Outbox
from .store import Account


def register(ctx: RelayContext, session: Session, frame: Register) -> None:
    """SPEC §4.2, §4.6: create the account the fresh challenge was signed for.

    The checks run in the order of SPEC §4.6.2, cheapest first; each refusal
    leaves the challenge spent.
    """
    now = ctx.clock()
    conn = session.conn
    conn.spend_challenge(now)
    # "Every REGISTER that passes the challenge check spends a token of its
    # source's bucket before any other check" — the store's, shared by every worker.
    ctx.run_job(
        session, frame, "take_budget", ctx.registration.budget(session.source, now),
        lambda wait_ms: _admitted(ctx, session, frame, now, wait_ms),
    )  # fmt: skip


def _admitted(ctx: RelayContext, session: Session, frame: Register, now: int, wait_ms: int) -> None:
    """The rest of SPEC §4.6.2's checks, once the source's token is spent."""
    ctx.registration.admitted(wait_ms)
    if not session.open:
        return
    conn = session.conn
    conn.verify_registration_signature(frame)
    invite = ctx.registration.invite_to_consume(frame.invite)  # 203 without one
    check = conn.registration_proof_check(frame)  # 203 without a nonce
    account = Account(frame.handle, frame.kind, frame.identity_key)

    def created(_: None) -> None:
        log_event(logging.INFO, "registered", handle=account.handle, kind=account.kind)
        # Recorded only once the account is ours: a refused REGISTER of a taken handle
        # must not touch its owner's record.
        open_session(
            ctx, session, frame, account.handle,
            lambda: _welcome(ctx, session, frame.id, account, queued=0, one_time=0,
                             has_signed=False),
        )  # fmt: skip

    def create() -> None:
        # The invite, the handle and its lookalikes: operation ``create_account``.
        ctx.run_job(
            session, frame, "create_account",
            (account.handle, account.kind, account.identity_key, now, invite), created,
        )  # fmt: skip

    if check is None:
        create()
        return

    def proven(future: asyncio.Future[bool]) -> None:
        if future.cancelled() or not session.open:
            return
        ctx.guard(session, frame, lambda: create() if future.result() else _refuse_proof())

    # "The relay MUST check with exactly one [evaluation] [...] off its event loop."
    ctx.registration.check_off_loop(session.source, lambda: session.open and check(), proven)


def _refuse_proof() -> None:
    raise RegistrationRefused("proof of work does not solve the puzzle")


def login(ctx: RelayContext, session: Session, frame: Login) -> None:
    """SPEC §4.3: log in with the account's current identity key."""
    now = ctx.clock()
    # The same work for an unknown handle as for an existing one (SPEC §11.1): the
    # read, and everything after it up to verify_login's refusal.
    ctx.read(
        session, frame, "account_for_login", (frame.handle,),
        lambda account: _log_in(ctx, session, frame, now, account),
    )  # fmt: skip


def _log_in(
    ctx: RelayContext, session: Session, frame: Login, now: int, account: Account | None
) -> None:
    """The rest of a LOGIN, once the account (or None) is read."""
    session.conn.verify_login(frame, account.identity_key if account else None, now)
    assert account is not None  # verify_login refuses unknown handles
    not_before = now - ctx.config.queue_ttl_ms

    def counted(result: list[Any]) -> None:
        queued, one_time, has_signed, login_seq = result
        log_event(logging.INFO, "logged_in", handle=account.handle, queued=queued)
        session.login_seq = login_seq
        _welcome(ctx, session, frame.id, account, queued, one_time, has_signed)

    # Answered in this order: the buckets are taken over before WELCOME.
    open_session(ctx, session, frame, account.handle, lambda: None)
    # Through the store, so the counts include every earlier frame's writes; it also
    # numbers this login, so the newest login of an account wins on every worker.
    # The key just verified must still be the account's when the login is counted: a
    # rotation committed meanwhile refuses it (SPEC §4.3), or the old key logs in after it.
    args = (account.handle, not_before, account.identity_key)
    ctx.run_job(session, frame, "login_counts", args, counted)


def open_session(
    ctx: RelayContext, session: Session, frame: Frame, handle: str, then: Callable[[], None]
) -> None:
    """Record ``session`` as ``handle``'s live connection, and take its per-account rate
    limits over from the relay process that served the previous one (SPEC §10).

    One bucket per account for the whole relay, however many processes serve it: when
    the previous connection was another process's, this process counts the account's
    buckets as emptied when that connection ended — or now, if it may still be open
    (the other process has not closed it yet, or died) — so moving between processes
    never refills a bucket faster than waiting would.
    """
    now = ctx.clock()

    def opened(previous: list[Any]) -> None:
        worker, live, ended_at = previous
        session.recorded = True
        if worker is not None and worker != ctx.worker_id:
            ctx.limiters.take_over(handle, now if live or ended_at is None else ended_at)
        then()

    args = (handle, ctx.worker_id, session.number, now)
    ctx.run_job(session, frame, "open_session", args, opened)


def close_session(ctx: RelayContext, session: Session) -> None:
    """Record the end of ``session``'s connection (SPEC §10): its account's next
    connection, on any relay process, starts from the buckets as they stood now."""
    handle = session.handle
    if not session.recorded or handle is None or not ctx.store.running:
        return
    session.recorded = False
    ctx.store.call(
        "close_session", (handle, ctx.worker_id, session.number, ctx.clock()),
        lambda ok, value: None,  # the record is a hint for the next process; nothing to answer
    )  # fmt: skip


def logged_in_elsewhere(ctx: RelayContext, handle: str, login_seq: int) -> None:
    """A LOGIN hint: ``handle`` logged in on another worker (SPEC §1.2.3): an older
    connection of it here is closed with 4000 ``replaced``."""
    ctx.sessions.logged_in_elsewhere(handle, login_seq)


def catch_up_logins(ctx: RelayContext) -> None:
    """LOGIN hints may have been lost (the router or the store reconnected): read the
    logins of every account connected here from the tables, and replace each connection
    that a newer login, on another worker, has superseded meanwhile (SPEC §1.2.3)."""
    handles = [s.handle for s in ctx.sessions.all() if s.handle is not None]
    if not handles or not ctx.store.running:
        return

    def answered(ok: bool, value: Any) -> None:
        if ok:  # else the store is away again, and catches up once more when it is back
            for handle, login_seq in zip(handles, value, strict=True):
                ctx.sessions.logged_in_elsewhere(handle, login_seq)

    ctx.store.call("login_seqs", (handles,), answered)


def _welcome(
    ctx: RelayContext,
    session: Session,
    re: int,
    account: Account,
    queued: int,
    one_time: int,
    has_signed: bool,
) -> None:
    if not session.open:
        return
    session.send(
        Welcome(
            re=re,
            handle=account.handle,
            kind=account.kind,
            queued=queued,
            one_time_prekeys=one_time,
            has_signed_prekey=has_signed,
        )
    )
    if not ctx.sessions.attach(session):  # needs the handle WELCOME gave the connection
        return  # a newer login of the account, on another worker, replaced this one
    session.account = account
    session.outbox = Outbox(ctx, session)
    session.outbox.start()


def rotate_identity(ctx: RelayContext, session: Session, frame: RotateIdentity) -> None:
    """SPEC §3.4: replace the identity key; both keys sign the rotation.

    "The relay MUST check both signatures (ERROR 500 INVALID_STATEMENT
    otherwise) and that issued_at is within STATEMENT_SKEW_MS of its clock
    (ERROR 501 STALE_STATEMENT otherwise)."
    """
    handle = session.handle
    assert handle is not None
    ctx.limiters.rotate_identity.take(handle)  # SPEC §10, before any work
    now = ctx.clock()
    if abs(now - frame.issued_at) > limits.STATEMENT_SKEW_MS:
        raise StaleStatement()
    ctx.read_account(session, frame, lambda account: _rotate(ctx, session, frame, account))


def _rotate(ctx: RelayContext, session: Session, frame: RotateIdentity, account: Account) -> None:
    """The rest of ROTATE_IDENTITY, once the current key is read."""
    handle = account.handle
    old_key, new_key = account.identity_key, frame.new_identity_key
    if new_key == old_key:
        raise MalformedFrame("new_identity_key: equals the current key")
    transcript = rotate_transcript(ctx.relay_key, handle, old_key, new_key, frame.issued_at)
    if not (
        signature_valid(old_key, transcript, frame.old_signature)
        and signature_valid(new_key, transcript, frame.new_signature)
    ):
        raise InvalidStatement()

    def replaced(_: None) -> None:
        log_event(logging.INFO, "identity_rotated", handle=handle)
        session.account = Account(handle, account.kind, new_key)
        session.send(Ok(re=frame.id))

    # Compare-and-swap of the key and of the account's newest login (a newer connection of
    # the account, which proved the old key, would keep acting with it: SPEC §3.4), prekeys
    # of the old key deleted, a business's new key logged (SPEC §15.1).
    args = (handle, old_key, new_key, ctx.clock(), session.login_seq)
    ctx.run_job(session, frame, "rotate_identity", args, replaced)
