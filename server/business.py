"""PROFILE_PUT, PROFILE_FETCH, USAGE_FETCH: the business side of the relay (SPEC §8).

The relay stores a business's signed profile after checking it with
``open_profile`` and serves it with the operator badge currently in force;
it can alter neither. Badges enter the database only through
``blindrelay admin verify-business``. USAGE_FETCH reads the metering counts
that ``delivery`` commits with each envelope.

Not here: verification rules (``blindrelay.protocol.business``), tables
(``profiles``, ``metering``), the operator's CLI (``admin``).
"""

from __future__ import annotations

import logging

from blindrelay.protocol.business import open_profile
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.errors import Forbidden, InvalidProfile, NotFound
from blindrelay.protocol.frames import (
    AccountKind,
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
from .metering import MonthUsage
from .storage import Store


def put_profile(ctx: RelayContext, session: Session, frame: ProfilePut) -> None:
    """SPEC §8.2: "Only businesses may PROFILE_PUT (ERROR 202 otherwise); a
    malformed or wrongly signed profile gets ERROR 600 INVALID_PROFILE"."""
    handle = session.handle
    assert handle is not None
    account = ctx.accounts.get(handle)
    assert account is not None
    if account.kind != AccountKind.BUSINESS:
        raise Forbidden()
    open_profile(frame.profile, account.identity_key, handle)
    now = ctx.clock()
    key = account.identity_key

    def store_profile(store: Store) -> None:
        current = store.accounts.get(handle)
        if current is None or current.identity_key != key:
            raise InvalidProfile("identity key rotated")
        store.profiles.put(handle, frame.profile, now)

    def stored(_: None) -> None:
        log_event(logging.INFO, "profile_stored", handle=handle, size=len(frame.profile))
        session.send(Ok(re=frame.id))

    ctx.complete(session, frame, ctx.writer.submit(store_profile), stored)


def fetch_profile(ctx: RelayContext, session: Session, frame: ProfileFetch) -> None:
    """SPEC §8.1–8.2: PROFILE with the signed profile and the badge in force, if any.

    "An unknown handle gets ERROR 601 NOT_FOUND (business profiles are public)."
    """
    owner = frame.handle
    now = ctx.clock()

    def read(store: Store) -> Profile:
        account = store.accounts.get(owner)
        if account is None:
            raise NotFound()
        badge = store.badges.current(owner, key_fingerprint(account.identity_key), now)
        return Profile(
            re=frame.id,
            handle=owner,
            identity_key=account.identity_key,
            profile=store.profiles.get(owner),
            badge=badge,
        )

    ctx.complete(session, frame, ctx.writer.submit(read), session.send)


def fetch_usage(ctx: RelayContext, session: Session, frame: UsageFetch) -> None:
    """SPEC §8.4: a business reads its own counts for one UTC month; a user gets 202."""
    handle = session.handle
    assert handle is not None
    account = ctx.accounts.get(handle)
    assert account is not None
    if account.kind != AccountKind.BUSINESS:
        raise Forbidden()
    month = frame.month

    def answer(usage: MonthUsage) -> None:
        session.send(
            Usage(
                re=frame.id,
                month=month,
                notifications=tuple(
                    UsageCount(category=c, count=n)
                    for c, n in sorted(usage.notifications.items())
                    if n
                ),
                service_replies=usage.service_replies,
                user_initiated=usage.user_initiated,
            )
        )

    ctx.complete(session, frame, ctx.writer.submit(lambda s: s.usage.month(handle, month)), answer)
