"""PROFILE_PUT, PROFILE_FETCH, USAGE_FETCH, BILL_FETCH: the business side of the relay
(SPEC §8).

The relay stores a business's signed profile after checking it with
``open_profile`` and serves it with the operator badge currently in force;
it can alter neither. Badges enter the database only through
``blindrelay admin verify-business``. USAGE_FETCH reads the metering counts
that ``delivery`` commits with each envelope; BILL_FETCH pages through a closed
month's bill, with the proof that it is the one in the log (§8.5).

Not here: verification rules (``blindrelay.protocol.business``), tables
(``store``), the operator's CLI (``admin``).
"""

from __future__ import annotations

import logging
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.business import open_profile
from blindrelay.protocol.errors import Forbidden
from blindrelay.protocol.frames import (
    AccountKind,
    Bill,
    BillFetch,
    Ok,
    Profile,
    ProfileFetch,
    ProfilePut,
    Usage,
    UsageCount,
    UsageFetch,
)

from .context import RelayContext, Session
from .logs import log_event
from .store import Account
from .transparency import log_bucket


def put_profile(ctx: RelayContext, session: Session, frame: ProfilePut) -> None:
    """SPEC §8.2: "Only businesses may PROFILE_PUT (ERROR 202 otherwise); a
    malformed or wrongly signed profile gets ERROR 600 INVALID_PROFILE"."""
    handle = session.handle
    assert handle is not None
    ctx.limiters.profile_put.take(handle)  # SPEC §10, before any work
    _business_only(session)
    ctx.read_account(session, frame, lambda account: _put(ctx, session, frame, account))


def _business_only(session: Session) -> None:
    """202 for a user: a kind never changes, so the session's account tells."""
    account = session.account
    assert account is not None
    if account.kind != AccountKind.BUSINESS:
        raise Forbidden()


def _put(ctx: RelayContext, session: Session, frame: ProfilePut, account: Account) -> None:
    """PROFILE_PUT once the current identity key is read: check, then ``put_profile``."""
    handle = account.handle
    open_profile(frame.profile, account.identity_key, handle)

    def stored(_: None) -> None:
        log_event(logging.INFO, "profile_stored", handle=handle, size=len(frame.profile))
        session.send(Ok(re=frame.id))

    ctx.run_job(
        session, frame, "put_profile",
        (handle, account.identity_key, frame.profile, ctx.clock()), stored,
    )  # fmt: skip


def fetch_profile(ctx: RelayContext, session: Session, frame: ProfileFetch) -> None:
    """SPEC §8.1–8.2: PROFILE with the signed profile and the badge in force, if any.

    Profiles are public for businesses only: a user and an unknown handle get
    the same ERROR 601 (decided in the store's ``fetch_profile`` operation).
    """
    assert session.handle is not None
    ctx.limiters.profile_fetch.take(session.handle)  # SPEC §10, before any work
    owner = frame.handle

    def read(result: list[Any]) -> None:
        identity_key, profile, badge = result
        session.send(
            Profile(
                re=frame.id, handle=owner, identity_key=identity_key, profile=profile, badge=badge
            )
        )

    ctx.run_job(session, frame, "fetch_profile", (owner, ctx.clock()), read)


def fetch_usage(ctx: RelayContext, session: Session, frame: UsageFetch) -> None:
    """SPEC §8.4: a business reads its own counts for one UTC month; a user gets 202."""
    handle = session.handle
    assert handle is not None
    ctx.limiters.usage_fetch.take(handle)  # SPEC §10, before any work
    _business_only(session)
    month = frame.month

    def answer(usage: list[Any]) -> None:
        notifications, service_replies, user_initiated = usage
        session.send(
            Usage(
                re=frame.id,
                month=month,
                notifications=tuple(
                    UsageCount(category=c, count=n) for c, n in sorted(notifications.items()) if n
                ),
                service_replies=service_replies,
                user_initiated=user_initiated,
            )
        )

    ctx.run_job(session, frame, "usage_month", (handle, month), answer)


def fetch_bill(ctx: RelayContext, session: Session, frame: BillFetch) -> None:
    """SPEC §8.5: a business reads a page of its own closed bill; a user gets 202. A
    page costs a token of the account's log bucket (§15.6): it is a log read."""
    handle = session.handle
    assert handle is not None
    ctx.limiters.log_fetch.take(log_bucket(session))  # SPEC §10, before any work
    _business_only(session)
    month, start = frame.month, frame.start

    def answer(page: list[Any]) -> None:
        entry, index, proof, sth, salt, items = page
        page_items = tuple(items)
        bill = Bill(
            re=frame.id, month=month, entry=entry, index=index, proof=tuple(proof), sth=sth,
            salt=salt, start=start, items=page_items,
        )  # fmt: skip
        session.send(bill)

    ctx.run_job(session, frame, "bill_page", (handle, month, start, limits.MAX_BILL_ITEMS), answer)
