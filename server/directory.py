"""The prekey directory: upload, bundle fetch, low-water notice (SPEC §5).

The relay verifies the signed prekey's signature with the account's identity
key before storing it, using the end-to-end layer's own message format
(:func:`blindrelay.protocol.crypto.keys.signed_prekey_message`), so a bundle
it serves always verifies for the initiator. One-time prekeys are unsigned
(as in X3DH); each is served at most once, consumed inside one store operation.

Not here: key generation and custody (clients), storage (``store``).
"""

from __future__ import annotations

import logging
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.crypto.keys import signed_prekey_message, verify_signature
from blindrelay.protocol.errors import InvalidPrekeys, InvalidSignature
from blindrelay.protocol.frames import (
    Bundle,
    BundleFetch,
    LogProof,
    Ok,
    OneTimePreKeyRecord,
    PrekeysLow,
    PrekeysUpload,
    SignedPreKeyRecord,
)
from blindrelay.protocol.transparency.entries import KeyBinding, decode_entry

from .context import RelayContext, Session
from .logs import log_event
from .store import Account


def upload(ctx: RelayContext, session: Session, frame: PrekeysUpload) -> None:
    """SPEC §5.2: store a signed prekey (replacing) and add one-time prekeys."""
    handle = session.handle
    assert handle is not None
    ctx.limiters.prekeys_upload.take(handle)  # SPEC §10, before any work
    ctx.read_account(session, frame, lambda account: _verified(ctx, session, frame, account))


def _verified(ctx: RelayContext, session: Session, frame: PrekeysUpload, account: Account) -> None:
    """PREKEYS_UPLOAD once the identity key is read: check the signed prekey with it."""
    signed = frame.signed_prekey
    if signed is not None:
        # "The relay MUST verify the signed prekey's signature before storing it."
        try:
            verify_signature(
                account.identity_key, signed_prekey_message(signed.public), signed.signature
            )
        except InvalidSignature:
            raise InvalidPrekeys("signed prekey signature") from None
    # Refused here when the store already shows why; its operation checks again
    # (uploads in flight may not be visible yet), before it writes anything.
    ctx.read(
        session, frame, "check_prekey_upload",
        (account.handle, [key.key_id for key in frame.one_time],
         ctx.config.max_stored_one_time_prekeys),
        lambda _: _store(ctx, session, frame, account),
    )  # fmt: skip


def _store(ctx: RelayContext, session: Session, frame: PrekeysUpload, account: Account) -> None:
    """PREKEYS_UPLOAD once nothing refuses it already: operation ``upload_prekeys``."""
    handle = account.handle
    signed = frame.signed_prekey

    def stored(_: None) -> None:
        log_event(
            logging.DEBUG, "prekeys_stored", handle=handle, signed=signed is not None,
            one_time=len(frame.one_time),
        )  # fmt: skip
        session.send(Ok(re=frame.id))

    ctx.run_job(
        session, frame, "upload_prekeys",
        (handle, account.identity_key,
         [signed.key_id, signed.public, signed.signature] if signed is not None else None,
         [[key.key_id, key.public] for key in frame.one_time],
         ctx.config.max_stored_one_time_prekeys, ctx.clock()),
        stored,
    )  # fmt: skip


def fetch(ctx: RelayContext, session: Session, frame: BundleFetch) -> None:
    """SPEC §5.3, §7.3: serve a bundle, consuming one one-time prekey atomically.

    Whether the requester may fetch is ``may_deliver`` on the pair's state,
    decided in the same store operation that consumes the key (``take_bundle``).
    An unknown handle,
    a refusal by consent or block, and an account without a signed prekey get
    the same RECIPIENT_UNAVAILABLE (SPEC §7.7): the directory reveals
    existence only by serving a bundle. With no one-time prekey left, or the
    owner's budget of them spent (SPEC §5.3: per target, so sybils cannot drain
    it), the bundle goes out without one.
    """
    requester = session.handle
    assert requester is not None
    ctx.limiters.bundle_fetch.take(requester)
    account = session.account  # only its kind is needed, and a kind never changes
    assert account is not None
    owner = frame.handle

    def taken(row: list[Any]) -> None:
        identity_key, kind, signed, one_time, remaining, found = row
        session.send(
            Bundle(
                re=frame.id,
                handle=owner,
                kind=kind,
                identity_key=identity_key,
                signed_prekey=SignedPreKeyRecord(*signed),
                one_time=OneTimePreKeyRecord(*one_time) if one_time is not None else None,
                log=_log_proof(found, identity_key),
            )
        )
        log_event(
            logging.DEBUG, "bundle_served", handle=requester, owner=owner,
            one_time=one_time is not None, remaining=remaining, proven=found is not None,
        )  # fmt: skip
        # SPEC §5.4: tell an online owner when its pool runs low (also when it is empty).
        if remaining < limits.PREKEY_LOW_WATER:
            prekeys_low(ctx, owner, remaining)

    config = ctx.config
    ctx.run_job(
        session, frame, "take_bundle",
        (requester, account.kind, owner, ctx.clock(), config.one_time_prekey_rate_per_h,
         config.one_time_prekey_burst),
        taken,
    )  # fmt: skip


def _log_proof(found: list[Any] | None, identity_key: bytes) -> LogProof | None:
    """The binding's proof (SPEC §15.6 rule 3), read in the transaction that served the
    key; checked once more here so that a bundle never proves another key than its own."""
    if found is None:
        return None
    entry, index, proof, sth = found
    binding = decode_entry(entry)
    if not isinstance(binding, KeyBinding) or binding.identity_key != identity_key:
        return None
    return LogProof(entry=entry, index=index, proof=tuple(proof), sth=sth)


def prekeys_low(ctx: RelayContext, owner: str, remaining: int) -> None:
    """SPEC §5.4: PREKEYS_LOW to ``owner`` if it is connected here — after a fetch on
    this worker, or a PREKEYS_LOW hint of a fetch on another one."""
    owner_session = ctx.sessions.get(owner)
    if owner_session is not None and owner_session.outbox is not None:
        owner_session.send(PrekeysLow(remaining=remaining))
