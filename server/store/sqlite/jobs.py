"""The SQLite back end's operations: :data:`..operations.CONTRACT`, run by the writer process.

Each function here implements the operation of its name; :data:`OPERATIONS` is
the only code the writer process (:mod:`.writer_process`) will run, looked up
by the name in a job ``[job id, operation name, args]`` — never a pickled
closure (the package forbids pickle). Each takes the writer's
:class:`~.tables.Tables` and the contract's plain msgpack values and returns
plain values; the handler that called it rebuilds what it needs on the event
loop (for a SEND: only the delivery id and time come back, the envelope it
already has).

Everything that must be atomic with a write is decided here, inside the
writer's transaction: consent with the enqueue (:func:`decide`), idempotence,
the queue cap, metering, a statement with its purge and receipt.

Not here: the contract (``..operations``), on-loop checks and answers
(``auth``, ``directory``, ``delivery``, ``statements``, ``business``), the
transaction itself (``tables.GroupCommitter``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.consent import (
    REFUSE,
    Decision,
    PairState,
    Request,
    Verdict,
    after_accept,
    is_stranger,
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
    unverified_body,
)

from ..records import Account, envelope_row
from .tables import Tables

# --- shared rules ------------------------------------------------------------


def decide(
    tables: Tables,
    sender: Account,
    to: str,
    request: Request,
    now: int,
    *,
    category: str | None = None,
    categories: frozenset[str] = frozenset(),
    message_request_max: int = limits.MESSAGE_REQUEST_MAX,
) -> tuple[Account | None, PairState, Decision]:
    """SPEC §7.3 inside a writer job: the recipient, the pair's state, the verdict.

    "The relay MUST do the same work (one lookup of the pair state, including
    for an unknown account) before answering": the pair state is read before
    the recipient's existence is looked at.
    """
    state = tables.ledger.pair_state(sender.handle, to)
    verified = (
        sender.kind == AccountKind.BUSINESS
        and request in BADGE_DEPENDENT
        and business_verified(tables, sender.handle, now)
    )
    recipient = tables.accounts.get(to)
    if recipient is None:
        return None, state, REFUSE
    decision = may_deliver(
        sender=sender.handle, recipient=to, sender_kind=sender.kind,
        recipient_kind=recipient.kind, request=request, state=state, now=now,
        category=category, categories=categories, sender_verified=verified,
        message_request_max=message_request_max,
    )  # fmt: skip
    return recipient, state, decision


BADGE_DEPENDENT = frozenset({Request.CONSENT_REQUEST, Request.BUNDLE_FETCH})
"""What a business may do to a stranger only with a badge (SPEC §7.3); nothing else
reads the badge store, so notifications and replies cost no lookup."""


def business_verified(tables: Tables, handle: str, now: int) -> bool:
    """SPEC §7.3, §8.1: a badge in force for the business's current identity key.

    Read from the badge store on every call, never cached: "when the operator
    revokes a badge the relay stops serving it at once", and stops counting it.
    """
    account = tables.accounts.get(handle)
    if account is None:
        return False
    return tables.badges.current(handle, key_fingerprint(account.identity_key), now) is not None


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


# --- operations ----------------------------------------------------------------


def noop(tables: Tables) -> None:
    """A barrier: resolved once every job submitted before it has committed."""


def relay_seed(tables: Tables) -> bytes | None:
    row = tables.db.conn.execute("SELECT seed FROM relay_identity WHERE id = 1").fetchone()
    return bytes(row[0]) if row is not None else None


def create_relay_seed(tables: Tables, seed: bytes, public: bytes, now: int) -> bytes:
    """The stored seed: ``seed`` unless one was stored meanwhile."""
    return tables.relay_identity.load_or_create(lambda: (seed, public), now)


def create_account(
    tables: Tables,
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
    if invite is not None and not tables.invites.consume(invite):
        raise RegistrationRefused("invite unknown or used")
    # "The relay MUST refuse [...] a handle with a leading skeleton equal to the
    # skeleton of an existing business, with ERROR 201 HANDLE_TAKEN."
    if tables.lookalikes.collides(handle):
        raise HandleTaken()
    # "Handles are unique: a REGISTER for an existing handle MUST be refused."
    if not tables.accounts.create(Account(handle, kind, identity_key), now):
        raise HandleTaken()
    if kind == AccountKind.BUSINESS:
        tables.lookalikes.add(handle)


def login_counts(tables: Tables, handle: str, not_before: int) -> list[Any]:
    """[queued, one-time prekeys, has signed prekey] — through the writer, so the
    counts include every earlier frame's writes."""
    one_time, has_signed = tables.prekeys.counts(handle)
    return [tables.queue.count(handle, not_before), one_time, has_signed]


def rotate_identity(tables: Tables, handle: str, old_key: bytes, new_key: bytes) -> None:
    # Compare-and-swap: a concurrent rotation makes this proof stale.
    if not tables.accounts.replace_identity_key(handle, old_key, new_key):
        raise StaleStatement()
    # The prekeys were signed by the old key; a bundle must never mix keys.
    tables.prekeys.delete_all(handle)


def upload_prekeys(
    tables: Tables,
    handle: str,
    identity_key: bytes,
    signed: list[Any] | None,
    one_time: list[list[Any]],
    cap: int,
    now: int,
) -> None:
    """``signed`` = [key_id, public, signature] (verified on the loop),
    ``one_time`` = [[key_id, public]…]."""
    current = tables.accounts.get(handle)
    if current is None or current.identity_key != identity_key:
        raise InvalidPrekeys("identity key rotated during upload")
    signed_record = SignedPreKeyRecord(*signed) if signed is not None else None
    records = [OneTimePreKeyRecord(key_id, public) for key_id, public in one_time]
    tables.prekeys.upload(handle, signed_record, records, cap, now)


ONE_TIME_PREKEYS = "one_time_prekeys"
"""The :class:`~.storage.Budgets` bucket of one-time prekeys handed out per owner."""


def take_bundle(
    tables: Tables,
    requester: str,
    requester_kind: str,
    owner: str,
    now: int,
    rate_per_h: float = limits.ONE_TIME_PREKEY_RATE_PER_H,
    burst: int = limits.ONE_TIME_PREKEY_BURST,
) -> list[Any]:
    """SPEC §5.3, §7.3: consent decided and one one-time prekey consumed in one job.

    "The relay … hands out at most ONE_TIME_PREKEY_BURST one-time prekeys of one owner,
    refilled at ONE_TIME_PREKEY_RATE_PER_H …, whoever asks. When the owner's budget is
    spent the relay MUST still serve the bundle, without one_time."

    Returns [identity_key, kind, [key_id, public, signature], [key_id, public] | None,
    remaining].
    """
    sender = Account(requester, requester_kind, b"")
    _, _, decision = decide(tables, sender, owner, Request.BUNDLE_FETCH, now)
    refuse_unless_allowed(decision)
    row = tables.prekeys.take_bundle(
        owner, lambda: tables.budgets.take(ONE_TIME_PREKEYS, owner, rate_per_h, burst, now)
    )
    if row is None:
        raise RecipientUnavailable()
    spk, otk = row.signed_prekey, row.one_time
    return [
        row.identity_key, row.kind, [spk.key_id, spk.public, spk.signature],
        [otk.key_id, otk.public] if otk is not None else None, row.remaining,
    ]  # fmt: skip


FIRST_CONTACTS = "first_contacts"
"""The :class:`~.storage.Budgets` bucket of new strangers per sender (SPEC §7.3)."""


def send(
    tables: Tables,
    handle: str,
    kind: str,
    to: str,
    msg_id: bytes,
    intent: str,
    category: str | None,
    categories: list[str] | None,
    body: bytes,
    now: int,
    rules: list[Any],
) -> Any:
    """SPEC §6.1–6.3, §7.3, §8.4: decide, enqueue, update the pair, meter — one job.

    Returns the original time (an int) for a resend, else [delivery_id, at].
    """
    cap, window_ms, per_sender, strangers, request_max, contacts_per_h, contacts_burst = rules
    digest = envelope_digest(to, intent, category, categories, body)
    sender = Account(handle, kind, b"")
    queue = tables.queue
    asked = frozenset(categories or ())
    recipient, state, decision = decide(
        tables, sender, to, Request(intent), now, category=category, categories=asked,
        message_request_max=request_max,
    )  # fmt: skip
    full = stranger = False
    if recipient is None and kind == AccountKind.USER and intent == "chat" and not state.wrote:
        # SPEC §7.7, "the same work … including for an unknown account": a chat to an
        # unknown handle reads the first-contact budget as a new stranger's would, so
        # a sender whose budget is spent cannot tell the two refusals apart by time.
        tables.budgets.tokens(FIRST_CONTACTS, handle, contacts_per_h, contacts_burst, now)
    if decision.verdict is Verdict.ALLOW:
        assert recipient is not None
        # SPEC §6.3: the strangers' pool is a user's; a business's customers are all
        # strangers to it, and the pool would shut every one of them out alike.
        stranger = (
            recipient.kind == AccountKind.USER
            and to not in state.wrote  # a contact: the common case, decided here
            and is_stranger(state, handle, to)
        )
        # "The relay MUST refuse with 401 QUEUE_FULL an envelope that would take a
        # recipient's undelivered envelopes past QUEUE_CAP_PER_RECIPIENT, the sender's own
        # … past QUEUE_SHARE_PER_SENDER, or — for a user recipient and a sender that is a
        # stranger to it — the strangers' … past QUEUE_SHARE_STRANGERS."
        queued = queue.queued(to)
        full = queued >= cap
        floor = per_sender if per_sender < strangers else strangers
        if not full and queued >= floor:  # below it no share can be reached: no count
            shares = queue.shares(to, floor)
            full = shares.senders.get(handle, 0) >= per_sender or (
                stranger and shares.strangers >= strangers
            )
        # SPEC §7.3: "a user may open at most FIRST_CONTACTS_BURST of those at once,
        # refilled at FIRST_CONTACTS_PER_H"; refused like any pair-dependent refusal.
        # Taken last, so a refusal above spends nothing, and an empty bucket writes nothing.
        take = tables.budgets.take
        if (
            not full
            and decision.first_contact
            and not take(FIRST_CONTACTS, handle, contacts_per_h, contacts_burst, now)
        ):
            decision = REFUSE
    if decision.verdict is not Verdict.ALLOW or full:
        # A resend is answered from ``sent`` before any refusal: it was decided,
        # enqueued and counted once already ("an idempotent resend counts once").
        resend = queue.remembered(handle, msg_id, digest)
        if resend is not None:
            return resend.at
        refuse_unless_allowed(decision)
        raise QueueFull()
    assert recipient is not None
    delivery_id = queue.add_if_new(
        to, sender, msg_id, intent, category, categories, body, digest, now, stranger
    )
    if delivery_id is None:  # a resend (or MessageIdReused); nothing was written
        known = queue.remembered(handle, msg_id, digest)
        assert known is not None
        return known.at
    new_state = after_accept(state, decision, now, window_ms)
    if new_state is not state and new_state != state:  # a notification changes nothing
        tables.ledger.store_pair(handle, to, new_state)
    if decision.meter is not None:
        # "Counts MUST be committed in the same transaction as the envelope they count."
        business = handle if kind == AccountKind.BUSINESS else recipient.handle
        tables.usage.count(business, now, decision.meter, category)
    return [delivery_id, now]


def acknowledge(tables: Tables, acks: list[list[Any]]) -> list[int]:
    """[[handle, delivery ids], …] → rows deleted per ACK.

    ACKs come merged (:meth:`.writer.Writer.call_many`): a fan-out brings one
    per recipient, each a few rows, and one job for a loop turn's worth of
    them costs the writer one job instead of hundreds.
    """
    acknowledge_ids = tables.queue.acknowledge
    get = tables.accounts.get
    results = []
    for handle, delivery_ids in acks:
        account = get(handle)
        # Only a business's queue holds forwarded statements (SPEC §7.5).
        itemized = account is not None and account.kind == AccountKind.BUSINESS
        results.append(acknowledge_ids(handle, delivery_ids, itemized=itemized))
    return results


def page(tables: Tables, handle: str, after: int, limit: int, not_before: int) -> list[list[Any]]:
    return [envelope_row(e) for e in tables.queue.page(handle, after, limit, not_before)]


def apply_statement(
    tables: Tables,
    handle: str,
    signed: bytes,
    now: int,
    cooldown_ms: int,
    max_block_targets: int = limits.MAX_BLOCK_TARGETS,
) -> list[Any]:
    """SPEC §7.4–7.5 after the stateless checks passed on the loop.

    ``signed`` was verified there; decoding it again here (without the
    signature check) is cheaper than shipping each field. Returns
    [purged delivery ids (the signer's queue), forwarded envelope row | None,
    superseded delivery ids (the target's queue)].
    """
    statement = unverified_body(ConsentStatement, signed)
    current = tables.accounts.get(handle)
    if current is None or current.identity_key != statement.signer_key:
        raise InvalidStatement("signer_key: identity key rotated")
    # "…whose action does not fit the signer's kind" → 500: it depends on the signer only.
    if statement.is_consent and current.kind != AccountKind.USER:
        raise InvalidStatement("grant, deny and revoke are made by users")
    target = tables.accounts.get(statement.target)
    # "A grant, deny or revoke whose target is not a business — a user or a handle that
    # does not exist — gets ERROR 400": one refusal, so it tells neither kind nor existence.
    if statement.is_consent and (target is None or target.kind != AccountKind.BUSINESS):
        raise RecipientUnavailable()
    # A block or unblock of a handle nobody holds is kept like any other (SPEC §7.4).
    target_kind = target.kind if target is not None else None
    # "…or whose (signer, nonce) it has seen before" → 501.
    if tables.ledger.seen(handle, statement.nonce):
        raise StaleStatement("nonce: statement seen before")
    action = Action(statement.action)
    if action is Action.BLOCK:
        # "…once the signer has them on record for MAX_BLOCK_TARGETS accounts, existing
        # or not" → 500.
        on_record = tables.ledger.block_targets(handle, statement.target)
        if on_record is not None and on_record >= max_block_targets:
            raise InvalidStatement(f"blocks on record for {on_record} accounts already")
    state = tables.ledger.pair_state(handle, statement.target)
    new_state, purge = transition(
        state,
        action=action,
        signer=handle,
        categories=frozenset(statement.categories or ()),
        signer_is_user_blocking_business=(
            action is Action.BLOCK
            and current.kind == AccountKind.USER
            and target_kind == AccountKind.BUSINESS
        ),
        now=now,
        cooldown_ms=cooldown_ms,
    )  # raises InvalidStatement (500) where the transition table has no entry
    tables.ledger.store_pair(handle, statement.target, new_state)
    superseded_nonces = tables.ledger.record(statement, signed, now)
    purged: list[int] = []
    if purge.everything_from_target:
        purged = tables.queue.withdraw(handle, statement.target, None)
    elif purge.notification_categories:
        purged = tables.queue.withdraw(handle, statement.target, purge.notification_categories)
    forwarded = None
    superseded: list[int] = []
    if target_kind == AccountKind.BUSINESS:
        # "A newer forwarded statement of the same signer, target and family replaces
        # the older one not yet delivered."
        superseded = tables.queue.withdraw_statements(statement.target, handle, superseded_nonces)
        # SPEC §7.5: to a business target only (every consent statement has one); never
        # while the target blocks the signer ("nothing from the blocked account reaches
        # the blocker").
        if statement.target not in new_state.blockers:
            forwarded = envelope_row(
                tables.queue.enqueue_statement(
                    statement.target, current, statement.nonce, signed, now
                )
            )
    return [purged, forwarded, superseded]


def statements_in_force(tables: Tables, handle: str, after: int, limit: int) -> list[Any]:
    """SPEC §7.6: a statement is listed to its target only if it was forwarded to it —
    a business; a user is never listed who blocked them (SPEC §7.5)."""
    account = tables.accounts.get(handle)
    targeted = account is not None and account.kind == AccountKind.BUSINESS
    items, cursor = tables.ledger.in_force(handle, after, limit, targeted=targeted)
    return [items, cursor]


def put_profile(tables: Tables, handle: str, identity_key: bytes, profile: bytes, now: int) -> None:
    current = tables.accounts.get(handle)
    if current is None or current.identity_key != identity_key:
        raise InvalidProfile("identity key rotated")
    tables.profiles.put(handle, profile, now)


def fetch_profile(tables: Tables, owner: str, now: int) -> list[Any]:
    """SPEC §8.2: [identity_key, signed profile | None, badge in force | None] of a business.

    "A PROFILE_FETCH naming a user account or an unknown handle MUST get the
    same ERROR 601 NOT_FOUND … after the same work": every lookup runs before
    the kind is looked at (a user has neither profile nor badge rows), and the
    account is read with :meth:`~.storage.Accounts.get_evenly`, because the
    cached :meth:`~.storage.Accounts.get` answers a known handle faster.
    """
    account = tables.accounts.get_evenly(owner)
    identity_key = account.identity_key if account is not None else bytes(32)
    badge = tables.badges.current(owner, key_fingerprint(identity_key), now)
    profile = tables.profiles.get(owner)
    if account is None or account.kind != AccountKind.BUSINESS:
        raise NotFound()
    return [identity_key, profile, badge]


def usage_month(tables: Tables, handle: str, month: str) -> list[Any]:
    """[{category: notifications}, service replies, user-initiated]."""
    usage = tables.usage.month(handle, month)
    return [usage.notifications, usage.service_replies, usage.user_initiated]


def purge(tables: Tables, before: int, now: int) -> list[int]:
    """SPEC §6.6: drop envelopes and remembered msg_ids older than ``before``; and
    statement nonces that can no longer be replayed fresh (SPEC §7.6), and budgets
    that have refilled (SPEC §11)."""
    envelopes, ids = tables.queue.purge(before)
    tables.ledger.purge_nonces(now)
    tables.budgets.purge(now)
    return [envelopes, ids]


def checkpoint(tables: Tables) -> None:
    """SPEC §11.2: truncate the WAL once this batch has committed (a checkpoint
    cannot run inside the batch's transaction; :class:`~.storage.GroupCommitter`
    runs it before answering)."""
    tables.checkpoint_requested = True


OPERATIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        noop, relay_seed, create_relay_seed, create_account, login_counts, rotate_identity,
        upload_prekeys, take_bundle, send, acknowledge, page, apply_statement,
        statements_in_force, put_profile, fetch_profile, usage_month, purge, checkpoint,
    )
}  # fmt: skip
"""Operation name → function; the only code the writer process will run for a job."""
