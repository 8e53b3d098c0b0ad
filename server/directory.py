"""The prekey directory: upload, bundle fetch, low-water notice (SPEC §5).

The relay verifies the signed prekey's signature with the account's identity
key before storing it, using the end-to-end layer's own message format
(:func:`blindrelay.protocol.crypto.keys.signed_prekey_message`), so a bundle
it serves always verifies for the initiator. One-time prekeys are unsigned
(as in X3DH); each is served at most once, consumed inside one writer job.

Not here: key generation and custody (clients), storage (``storage.PreKeyStore``).
"""

from __future__ import annotations

import logging

from blindrelay.protocol import limits
from blindrelay.protocol.consent import Request
from blindrelay.protocol.crypto.keys import signed_prekey_message, verify_signature
from blindrelay.protocol.errors import InvalidPrekeys, InvalidSignature, RecipientUnavailable
from blindrelay.protocol.frames import Bundle, BundleFetch, Ok, PrekeysLow, PrekeysUpload

from .context import RelayContext, Session
from .delivery import decide, refuse_unless_allowed
from .logs import log_event
from .storage import PreKeyBundleRow, Store


def upload(ctx: RelayContext, session: Session, frame: PrekeysUpload) -> None:
    """SPEC §5.2: store a signed prekey (replacing) and add one-time prekeys."""
    handle = session.handle
    assert handle is not None
    account = ctx.accounts.get(handle)
    assert account is not None
    identity_key = account.identity_key
    signed = frame.signed_prekey
    if signed is not None:
        # "The relay MUST verify the signed prekey's signature before storing it."
        try:
            verify_signature(identity_key, signed_prekey_message(signed.public), signed.signature)
        except InvalidSignature:
            raise InvalidPrekeys("signed prekey signature") from None
    now = ctx.clock()
    cap = ctx.config.max_stored_one_time_prekeys

    def store_keys(store: Store) -> None:
        current = store.accounts.get(handle)
        if current is None or current.identity_key != identity_key:
            raise InvalidPrekeys("identity key rotated during upload")
        store.prekeys.upload(handle, signed, frame.one_time, cap, now)

    def stored(_: None) -> None:
        log_event(
            logging.DEBUG, "prekeys_stored", handle=handle, signed=signed is not None,
            one_time=len(frame.one_time),
        )  # fmt: skip
        session.send(Ok(re=frame.id))

    ctx.complete(session, frame, ctx.writer.submit(store_keys), stored)


def fetch(ctx: RelayContext, session: Session, frame: BundleFetch) -> None:
    """SPEC §5.3, §7.3: serve a bundle, consuming one one-time prekey atomically.

    Whether the requester may fetch is ``may_deliver`` on the pair's state,
    decided in the same writer job that consumes the key. An unknown handle,
    a refusal by consent or block, and an account without a signed prekey get
    the same RECIPIENT_UNAVAILABLE (SPEC §7.7): the directory reveals
    existence only by serving a bundle. With no one-time prekey left the
    bundle goes out without one.
    """
    requester = session.handle
    assert requester is not None
    ctx.limiters.bundle_fetch.take(requester)
    account = ctx.accounts.get(requester)
    assert account is not None
    owner = frame.handle
    now = ctx.clock()

    def take(store: Store) -> PreKeyBundleRow:
        _, _, decision = decide(store, account, owner, Request.BUNDLE_FETCH, now)
        refuse_unless_allowed(decision)
        row = store.prekeys.take_bundle(owner)
        if row is None:
            raise RecipientUnavailable()
        return row

    def taken(row: PreKeyBundleRow) -> None:
        session.send(
            Bundle(
                re=frame.id,
                handle=owner,
                kind=row.kind,
                identity_key=row.identity_key,
                signed_prekey=row.signed_prekey,
                one_time=row.one_time,
            )
        )
        log_event(
            logging.DEBUG, "bundle_served", handle=requester, owner=owner,
            one_time=row.one_time is not None, remaining=row.remaining,
        )  # fmt: skip
        # SPEC §5.4: tell an online owner when its pool runs low (also when it is empty).
        if row.remaining < limits.PREKEY_LOW_WATER:
            owner_session = ctx.sessions.get(owner)
            if owner_session is not None and owner_session.outbox is not None:
                owner_session.send(PrekeysLow(remaining=row.remaining))

    ctx.complete(session, frame, ctx.writer.submit(take), taken)
