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

Not here: the operations on accounts, their sessions and keys (``accountjobs``), on
the transparency log and the bills (``logjobs``); the contract (``..operations``);
on-loop checks and answers (``auth``, ``directory``, ``delivery``, ``statements``,
``business``); the transaction itself (``commit.GroupCommitter``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.consent import REFUSE, Meter, PairState, Request, Verdict
from blindrelay.protocol.crypto.fingerprint import key_fingerprint
from blindrelay.protocol.errors import (
    InvalidProfile,
    NotFound,
    QueueFull,
    RecipientUnavailable,
    StaleStatement,
)
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.signed import Action, ConsentStatement, unverified_body

from .. import transparency
from ..leases import leasable
from ..operations import SendRules
from ..records import Account, envelope_row
from ..rules import (
    BUDGETS,
    FIRST_CONTACTS,
    ONE_TIME_PREKEYS,
    STATEMENTS,
    budget_wait_ms,
    check_block_targets,
    check_statement,
    envelope_digest,
    judge,
    judge_send,
    metered_business,
    needs_badge,
    pair_after_send,
    queue_full,
    refuse_unless_allowed,
    revokes_on_unblock,
    share_floor,
    shares_matter,
    statement_effect,
)
from . import accountjobs, logjobs
from .leasing import check_spent, refused
from .logjobs import log_binding_proof
from .tables import Tables

# --- reads the rules need ----------------------------------------------------------


def pair_and_recipient(
    tables: Tables, sender: str, sender_kind: str, to: str, request: Request, now: int
) -> tuple[PairState, Account | None, bool]:
    """SPEC §7.3 inside a writer job: the pair's state, the recipient, and whether the
    sender holds a badge in force (read only where :func:`..rules.needs_badge`).

    "The relay MUST do the same work (one lookup of the pair state, including
    for an unknown account) before answering": the pair state is read before
    the recipient's existence is looked at.
    """
    state = tables.ledger.pair_state(sender, to)
    verified = needs_badge(sender_kind, request) and business_verified(tables, sender, now)
    return state, tables.accounts.get(to), verified


def business_verified(tables: Tables, handle: str, now: int) -> bool:
    """SPEC §7.3, §8.1: a badge in force for the business's current identity key.

    Read from the badge store on every call, never cached: "when the operator
    revokes a badge the relay stops serving it at once", and stops counting it.
    """
    account = tables.accounts.get(handle)
    if account is None:
        return False
    return tables.badges.current(handle, key_fingerprint(account.identity_key), now) is not None


_rules: tuple[list[Any], SendRules] = ([], SendRules(0, 0, 0, 0, 0, 0.0, 0))


def _send_rules(values: list[Any]) -> SendRules:
    """The :class:`SendRules` of a job's array, made once while the relay sends the same."""
    global _rules
    if _rules[0] != values:
        _rules = (values, SendRules(*values))
    return _rules[1]


# --- operations ----------------------------------------------------------------


def noop(tables: Tables) -> None:
    """A barrier: resolved once every job submitted before it has committed."""


def relay_seed(tables: Tables) -> bytes | None:
    row = tables.db.conn.execute("SELECT seed FROM relay_identity WHERE id = 1").fetchone()
    return bytes(row[0]) if row is not None else None


def create_relay_seed(tables: Tables, seed: bytes, public: bytes, now: int) -> bytes:
    """The stored seed: ``seed`` unless one was stored meanwhile."""
    return tables.relay_identity.load_or_create(lambda: (seed, public), now)


def take_budget(
    tables: Tables, name: str, key: str, rate_per_h: float, burst: int, now: int
) -> int:
    """0 with a token of ``key``'s budget ``name`` spent, else the wait for one."""
    if name not in BUDGETS:
        raise ValueError("unknown budget")
    if tables.budgets.take(name, key, rate_per_h, burst, now):
        return 0
    return budget_wait_ms(tables.budgets.tokens(name, key, rate_per_h, burst, now), rate_per_h)


def _log(tables: Tables, entry: bytes | None) -> None:
    """SPEC §15.1: the entry commits in the job's transaction, with what it records."""
    if entry is not None:
        tables.log.append([entry])


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
    request = Request.BUNDLE_FETCH
    state, recipient, verified = pair_and_recipient(
        tables, requester, requester_kind, owner, request, now
    )
    kind = recipient.kind if recipient is not None else None
    refuse_unless_allowed(
        judge(requester, requester_kind, owner, kind, request, state, now, verified=verified)
    )
    row = tables.prekeys.take_bundle(
        owner, lambda: tables.budgets.take(ONE_TIME_PREKEYS, owner, rate_per_h, burst, now)
    )
    if row is None:
        raise RecipientUnavailable()
    spk, otk = row.signed_prekey, row.one_time
    return [
        row.identity_key, row.kind, [spk.key_id, spk.public, spk.signature],
        [otk.key_id, otk.public] if otk is not None else None, row.remaining,
        log_binding_proof(tables, owner),
    ]  # fmt: skip


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
    lease: list[Any] | None = None,
) -> Any:
    """SPEC §6.1–6.3, §6.4.6, §7.3, §8.4: decide, enqueue, update the pair, meter — one
    job, in the order of :mod:`..rules`; ``lease`` is the SEND's ticket (:mod:`.leasing`).

    Returns the original time (an int) for a resend, else [delivery_id, at, previous]
    and, for a SEND that earns a delivery lease, the lease: [epoch, until, count].
    """
    send_rules = _send_rules(rules)
    digest = envelope_digest(to, intent, category, categories, body)
    queue = tables.queue
    request = Request(intent)
    leases = tables.leases
    ticket = leases.open(lease, handle, to)
    # pair_and_recipient, inline: this is the writer's hottest path.
    state = tables.ledger.pair_state(handle, to)
    verified = needs_badge(kind, request) and business_verified(tables, handle, now)
    recipient = tables.accounts.get(to)
    recipient_kind = recipient.kind if recipient is not None else None
    decision, stranger, probe = judge_send(
        send_rules, handle, kind, to, recipient_kind, request, category,
        frozenset(categories or ()), state, now, verified=verified,
    )  # fmt: skip
    contacts_per_h = send_rules.first_contacts_per_h
    contacts_burst = send_rules.first_contacts_burst
    if probe:
        tables.budgets.tokens(FIRST_CONTACTS, handle, contacts_per_h, contacts_burst, now)
    full = False
    queued = reserved = 0
    if decision.verdict is Verdict.ALLOW:
        queued = queue.queued(to)
        # SPEC §6.4.6: the room leases set aside counts as taken, for every SEND.
        reserved, held = leases.room(ticket, handle, to)
        taken = queued + reserved
        shares = (
            queue.shares(to, share_floor(send_rules)) if shares_matter(send_rules, taken) else None
        )
        full = queue_full(send_rules, handle, stranger, taken, shares, held)
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
        refused(ticket, "queue full" if full else "refused")
        refuse_unless_allowed(decision)
        raise QueueFull()
    check_spent(ticket)
    sender = Account(handle, kind, b"")
    added = queue.add_if_new(
        to, sender, msg_id, intent, category, categories, body, digest, now, stranger,
        ticket.delivery_id if ticket is not None else None,
    )  # fmt: skip
    if added is None:  # a resend (or MessageIdReused); nothing was written
        known = queue.remembered(handle, msg_id, digest)
        assert known is not None
        return known.at
    new_state = pair_after_send(send_rules, state, decision, now)
    if new_state is not None:
        tables.ledger.store_pair(handle, to, new_state)
    if decision.meter is not None:
        # "Counts MUST be committed in the same transaction as the envelope they count."
        business = metered_business(handle, kind, to)
        month = tables.usage.count(business, now, decision.meter, category)
        if decision.meter is Meter.NOTIFICATION:  # an item of the month's bill (§8.5)
            assert category is not None
            tables.bills.record(business, month, now, msg_id, category, to)
    delivery_id, previous = added
    if ticket is not None and leasable(kind, recipient_kind, request, decision, stranger):
        granted = leases.grant(ticket, handle, to, send_rules, queued + 1, reserved)
        if granted is not None:
            return [delivery_id, now, previous, granted]
    return [delivery_id, now, previous]


def acknowledge(tables: Tables, acks: list[list[Any]]) -> list[int]:
    """[[handle, delivery ids], …] → rows deleted per ACK.

    ACKs come merged (``Store.call_many``): a fan-out brings one
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


def page(
    tables: Tables, handle: str, after: int, limit: int, not_before: int,
    max_bytes: int | None = None,
) -> list[Any]:
    """[rows, high], ``high`` the last row's delivery id (or ``after``): one relay process
    serves the file, so no envelope reaches an outbox but by this writer's answers, in
    order, and a page need vouch for nothing past its rows (PostgreSQL's does)."""
    envelopes = tables.queue.page(handle, after, limit, not_before, max_bytes)
    rows = [envelope_row(e) for e in envelopes]
    return [rows, rows[-1][0] if rows else after]


def apply_statement(
    tables: Tables,
    handle: str,
    signed: bytes,
    now: int,
    cooldown_ms: int,
    max_block_targets: int = limits.MAX_BLOCK_TARGETS,
    statement_budget: list[Any] | None = None,
    delivery_id: int | None = None,
) -> list[Any] | int:
    """SPEC §7.4–7.5 after the stateless checks passed on the loop; ``delivery_id``, the
    forwarded receipt's if there is one, numbered by the relay process (§6.4.6).

    ``signed`` was verified there; decoding it again here (without the
    signature check) is cheaper than shipping each field. Returns
    [purged delivery ids (the signer's queue), forwarded envelope row | None,
    superseded delivery ids (the target's queue)] — or, nothing written, the ms until
    the signer's ``statement_budget`` ([rate per hour, burst], SPEC §10) has a token.
    """
    statement = unverified_body(ConsentStatement, signed)
    signer = tables.accounts.get(handle)
    target = tables.accounts.get(statement.target)
    check_statement(statement, signer, target)
    assert signer is not None
    # "…or whose (signer, nonce) it has seen before" → 501.
    if tables.ledger.seen(handle, statement.nonce):
        raise StaleStatement("nonce: statement seen before")
    if statement.action == Action.BLOCK:
        check_block_targets(
            tables.ledger.block_targets(handle, statement.target), max_block_targets
        )
    # An unblock goes where its block went (SPEC §7.5, T47): read before it supersedes it.
    block_to_target = statement.action == Action.UNBLOCK and tables.ledger.block_to_target(
        handle, statement.target
    )
    target_kind = target.kind if target is not None else None
    # Its revocation deferred to now, from the registration (SPEC §7.4, T57).
    registered_at = (
        tables.accounts.registered_at(statement.target)
        if revokes_on_unblock(statement, signer.kind, target_kind, block_to_target)
        else None
    )
    effect = statement_effect(
        statement, signer.kind, target_kind,
        tables.ledger.pair_state(handle, statement.target), now, cooldown_ms,
        block_to_target=block_to_target, target_registered_at=registered_at,
    )  # fmt: skip
    if statement_budget is not None:  # one for every relay process (SPEC §10, T64)
        rate_per_h, burst = statement_budget
        wait = take_budget(tables, STATEMENTS, handle, rate_per_h, burst, now)
        if wait:
            return wait
    tables.ledger.store_pair(handle, statement.target, effect.state)
    # Listed to its target only if forwarded or held back for it now (SPEC §7.6, T47).
    superseded_nonces = tables.ledger.record(statement, signed, now, to_target=effect.to_target)
    _log(tables, transparency.statement_logged(signed))
    purged: list[int] = []
    if effect.purge.everything_from_target:
        purged = tables.queue.withdraw(handle, statement.target, None)
    elif effect.purge.notification_categories:
        purged = tables.queue.withdraw(
            handle, statement.target, effect.purge.notification_categories
        )
    forwarded = None
    superseded: list[int] = []
    if effect.to_target:
        # "A newer forwarded statement of the same signer, target and family replaces
        # the older one not yet delivered."
        superseded = tables.queue.withdraw_statements(statement.target, handle, superseded_nonces)
    if effect.forward:
        forwarded = envelope_row(
            tables.queue.enqueue_statement(
                statement.target, signer, statement.nonce, signed, now, delivery_id
            )
        )
    return [purged, forwarded, superseded]


def statements_in_force(tables: Tables, handle: str, after: int, limit: int) -> list[Any]:
    """SPEC §7.6: a statement is listed to its target only if it was forwarded or held
    back for it — a business that existed then; a user is never listed who blocked them
    (SPEC §7.5), nor a business who blocked its handle before it was registered."""
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
    account is read with :meth:`~.tables.Accounts.get_evenly`, because the
    cached :meth:`~.tables.Accounts.get` answers a known handle faster.
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
    cannot run inside the batch's transaction; :class:`~.commit.GroupCommitter`
    runs it before answering)."""
    tables.checkpoint_requested = True


OPERATIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        noop, relay_seed, create_relay_seed, take_budget, take_bundle, send, acknowledge, page,
        apply_statement, statements_in_force, put_profile, fetch_profile, usage_month, purge,
        checkpoint,
    )
} | accountjobs.OPERATIONS | logjobs.OPERATIONS  # fmt: skip
"""Operation name → function; the only code the writer process will run for a job."""
