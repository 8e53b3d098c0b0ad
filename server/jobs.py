"""Every operation the writer process runs, by name (the other end of :mod:`.writer`).

Why a table of module-level functions: jobs cross a process boundary as
msgpack ``[job id, operation name, args]`` — never as pickled closures (the
package forbids pickle). Each operation takes the writer's :class:`Store` and
plain msgpack values (str, bytes, int, None, lists) and returns plain values;
the handler that submitted it rebuilds what it needs on the event loop (for a
SEND: only the delivery id and time come back, the envelope it already has).

Everything that must be atomic with a write is decided here, inside the
writer's transaction: consent with the enqueue (:func:`decide`), idempotence,
the queue cap, metering, a statement with its purge and receipt.

Not here: on-loop checks and answers (``auth``, ``directory``, ``delivery``,
``statements``, ``business``), the transaction itself (``storage``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from blindrelay.protocol.consent import (
    REFUSE,
    Decision,
    PairState,
    Request,
    Verdict,
    after_accept,
    may_deliver,
)
from blindrelay.protocol.consent import (
    apply_statement as transition,
)
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.errors import (
    Forbidden,
    HandleTaken,
    InvalidPrekeys,
    InvalidProfile,
    InvalidStatement,
    NotFound,
    QueueFull,
    RecipientUnavailable,
    RegistrationRefused,
    StaleStatement,
)
from blindrelay.protocol.frames import AccountKind, OneTimePreKeyRecord, SignedPreKeyRecord
from blindrelay.protocol.signed import (
    Action,
    ConsentStatement,
    check_statement_kinds,
    unverified_body,
)

from .storage import Account, QueuedEnvelope, Store

FORWARDED_ACTIONS = frozenset({Action.GRANT, Action.DENY, Action.REVOKE})
"""SPEC §7.5: always forwarded to the target (a business); blocks and unblocks
only when the target is a business."""


# --- shared rules ------------------------------------------------------------


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


def envelope_digest(
    to: str, intent: str, category: str | None, categories: list[str] | None, body: bytes
) -> bytes:
    """What makes two SENDs with one msg_id "the same" (SPEC §6.3): to, intent,
    category(ies) and body, length-prefixed so no two field lists collide."""
    joined = ",".join(categories) if categories is not None else ""
    parts = [b"blindrelay/v1/envelope\x00"]
    for part in (to.encode(), intent.encode(), (category or "").encode(), joined.encode(), body):
        parts.append(len(part).to_bytes(4, "big"))
        parts.append(part)
    return hashlib.sha256(b"".join(parts)).digest()


def envelope_row(envelope: QueuedEnvelope) -> list[Any]:
    """A queue row as msgpack values (the loop encodes DELIVER straight from it:
    :func:`.fastframes.deliver_row`)."""
    return [
        envelope.delivery_id, envelope.recipient, envelope.sender, envelope.sender_kind,
        envelope.msg_id, envelope.intent, envelope.category,
        list(envelope.categories) if envelope.categories is not None else None,
        envelope.sent_at, envelope.body,
    ]  # fmt: skip


# --- operations ----------------------------------------------------------------


def noop(store: Store) -> None:
    """A barrier: resolved once every job submitted before it has committed."""


def relay_seed(store: Store) -> bytes | None:
    row = store.db.conn.execute("SELECT seed FROM relay_identity WHERE id = 1").fetchone()
    return bytes(row[0]) if row is not None else None


def create_relay_seed(store: Store, seed: bytes, public: bytes, now: int) -> bytes:
    """The stored seed: ``seed`` unless one was stored meanwhile."""
    return store.relay_identity.load_or_create(lambda: (seed, public), now)


def create_account(
    store: Store,
    handle: str,
    kind: str,
    identity_key: bytes,
    now: int,
    invite: bytes | None = None,
) -> None:
    """SPEC §3.2, §4.2, §4.6.4: one job, so no two registrations can both pass a check.

    ``invite`` is the hash of the REGISTER's invite when the relay requires one.
    It is consumed first; a later refusal rolls the job back, invite included.
    """
    # "An invite MUST be consumed in the same transaction that creates the account."
    if invite is not None and not store.invites.consume(invite):
        raise RegistrationRefused("invite unknown or used")
    # "The relay MUST refuse [...] a handle with a leading skeleton equal to the
    # skeleton of an existing business, with ERROR 201 HANDLE_TAKEN."
    if store.lookalikes.collides(handle):
        raise HandleTaken()
    # "Handles are unique: a REGISTER for an existing handle MUST be refused."
    if not store.accounts.create(Account(handle, kind, identity_key), now):
        raise HandleTaken()
    if kind == AccountKind.BUSINESS:
        store.lookalikes.add(handle)


def login_counts(store: Store, handle: str, not_before: int) -> list[Any]:
    """[queued, one-time prekeys, has signed prekey] — through the writer, so the
    counts include every earlier frame's writes."""
    one_time, has_signed = store.prekeys.counts(handle)
    return [store.queue.count(handle, not_before), one_time, has_signed]


def rotate_identity(store: Store, handle: str, old_key: bytes, new_key: bytes) -> None:
    # Compare-and-swap: a concurrent rotation makes this proof stale.
    if not store.accounts.replace_identity_key(handle, old_key, new_key):
        raise StaleStatement()
    # The prekeys were signed by the old key; a bundle must never mix keys.
    store.prekeys.delete_all(handle)


def upload_prekeys(
    store: Store,
    handle: str,
    identity_key: bytes,
    signed: list[Any] | None,
    one_time: list[list[Any]],
    cap: int,
    now: int,
) -> None:
    """``signed`` = [key_id, public, signature] (verified on the loop),
    ``one_time`` = [[key_id, public]…]."""
    current = store.accounts.get(handle)
    if current is None or current.identity_key != identity_key:
        raise InvalidPrekeys("identity key rotated during upload")
    signed_record = SignedPreKeyRecord(*signed) if signed is not None else None
    records = [OneTimePreKeyRecord(key_id, public) for key_id, public in one_time]
    store.prekeys.upload(handle, signed_record, records, cap, now)


def take_bundle(
    store: Store, requester: str, requester_kind: str, owner: str, now: int
) -> list[Any]:
    """SPEC §5.3, §7.3: consent decided and one one-time prekey consumed in one job.

    Returns [identity_key, kind, [key_id, public, signature], [key_id, public] | None, remaining].
    """
    sender = Account(requester, requester_kind, b"")
    _, _, decision = decide(store, sender, owner, Request.BUNDLE_FETCH, now)
    refuse_unless_allowed(decision)
    row = store.prekeys.take_bundle(owner)
    if row is None:
        raise RecipientUnavailable()
    spk, otk = row.signed_prekey, row.one_time
    return [
        row.identity_key, row.kind, [spk.key_id, spk.public, spk.signature],
        [otk.key_id, otk.public] if otk is not None else None, row.remaining,
    ]  # fmt: skip


def send(
    store: Store,
    handle: str,
    kind: str,
    to: str,
    msg_id: bytes,
    intent: str,
    category: str | None,
    categories: list[str] | None,
    body: bytes,
    now: int,
    cap: int,
    window_ms: int,
) -> Any:
    """SPEC §6.1–6.3, §7.3, §8.4: decide, enqueue, update the pair, meter — one job.

    Returns the original time (an int) for a resend, else [delivery_id, at].
    """
    digest = envelope_digest(to, intent, category, categories, body)
    sender = Account(handle, kind, b"")
    queue = store.queue
    asked = frozenset(categories or ())
    recipient, state, decision = decide(
        store, sender, to, Request(intent), now, category=category, categories=asked
    )
    if decision.verdict is not Verdict.ALLOW or queue.queued(to) >= cap:
        # A resend is answered from ``sent`` before any refusal: it was decided,
        # enqueued and counted once already ("an idempotent resend counts once").
        resend = queue.remembered(handle, msg_id, digest)
        if resend is not None:
            return resend.at
        refuse_unless_allowed(decision)
        raise QueueFull()
    assert recipient is not None
    delivery_id = queue.add_if_new(
        to, sender, msg_id, intent, category, categories, body, digest, now
    )
    if delivery_id is None:  # a resend (or MessageIdReused); nothing was written
        known = queue.remembered(handle, msg_id, digest)
        assert known is not None
        return known.at
    new_state = after_accept(state, decision, now, window_ms)
    if new_state is not state and new_state != state:  # a notification changes nothing
        store.ledger.store_pair(handle, to, new_state)
    if decision.meter is not None:
        # "Counts MUST be committed in the same transaction as the envelope they count."
        business = handle if kind == AccountKind.BUSINESS else recipient.handle
        store.usage.count(business, now, decision.meter, category)
    return [delivery_id, now]


def acknowledge(store: Store, acks: list[list[Any]]) -> list[int]:
    """[[handle, delivery ids], …] → rows deleted per ACK.

    ACKs come merged (:meth:`.writer.Writer.call_many`): a fan-out brings one
    per recipient, each a few rows, and one job for a loop turn's worth of
    them costs the writer one job instead of hundreds.
    """
    acknowledge_ids = store.queue.acknowledge
    return [acknowledge_ids(handle, delivery_ids) for handle, delivery_ids in acks]


def page(store: Store, handle: str, after: int, limit: int, not_before: int) -> list[list[Any]]:
    return [envelope_row(e) for e in store.queue.page(handle, after, limit, not_before)]


def apply_statement(
    store: Store, handle: str, signed: bytes, now: int, cooldown_ms: int
) -> list[Any]:
    """SPEC §7.4–7.5 after the stateless checks passed on the loop.

    ``signed`` was verified there; decoding it again here (without the
    signature check) is cheaper than shipping each field. Returns
    [purged delivery ids, forwarded envelope row | None].
    """
    statement = unverified_body(ConsentStatement, signed)
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
    new_state, purge = transition(
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
    store.ledger.record(statement, signed, now)
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
        forwarded = envelope_row(
            store.queue.enqueue_statement(target.handle, current, statement.nonce, signed, now)
        )
    return [purged, forwarded]


def statements_in_force(store: Store, handle: str, after: int, limit: int) -> list[Any]:
    items, cursor = store.ledger.in_force(handle, after, limit)
    return [items, cursor]


def put_profile(store: Store, handle: str, identity_key: bytes, profile: bytes, now: int) -> None:
    current = store.accounts.get(handle)
    if current is None or current.identity_key != identity_key:
        raise InvalidProfile("identity key rotated")
    store.profiles.put(handle, profile, now)


def fetch_profile(store: Store, owner: str, now: int) -> list[Any]:
    """SPEC §8.2: [identity_key, signed profile | None, badge in force | None] of a business.

    "A PROFILE_FETCH naming a user account or an unknown handle MUST get the
    same ERROR 601 NOT_FOUND … after the same work": every lookup runs before
    the kind is looked at (a user has neither profile nor badge rows), and the
    account is read with :meth:`~.storage.Accounts.get_evenly`, because the
    cached :meth:`~.storage.Accounts.get` answers a known handle faster.
    """
    account = store.accounts.get_evenly(owner)
    identity_key = account.identity_key if account is not None else bytes(32)
    badge = store.badges.current(owner, key_fingerprint(identity_key), now)
    profile = store.profiles.get(owner)
    if account is None or account.kind != AccountKind.BUSINESS:
        raise NotFound()
    return [identity_key, profile, badge]


def usage_month(store: Store, handle: str, month: str) -> list[Any]:
    """[{category: notifications}, service replies, user-initiated]."""
    usage = store.usage.month(handle, month)
    return [usage.notifications, usage.service_replies, usage.user_initiated]


def purge(store: Store, before: int) -> list[int]:
    """SPEC §6.6: drop envelopes and remembered msg_ids older than ``before``."""
    envelopes, ids = store.queue.purge(before)
    return [envelopes, ids]


def checkpoint(store: Store) -> None:
    """SPEC §11.2: truncate the WAL once this batch has committed (a checkpoint
    cannot run inside the batch's transaction; :class:`~.storage.GroupCommitter`
    runs it before answering)."""
    store.checkpoint_requested = True


OPERATIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        noop, relay_seed, create_relay_seed, create_account, login_counts, rotate_identity,
        upload_prekeys, take_bundle, send, acknowledge, page, apply_statement,
        statements_in_force, put_profile, fetch_profile, usage_month, purge, checkpoint,
    )
}  # fmt: skip
"""Operation name → function; the only code the writer process will run for a job."""
