"""The rules inside the store's operations, as pure functions a back end calls on what it read.

Every function here takes plain values (records, a
:class:`~blindrelay.protocol.consent.PairState`, counts, ``now``) and touches
no store: a back end reads the state its own way — the SQLite writer row by
row through its caches, another back end set-based for a whole batch — and
calls the same functions, so the two decide alike by construction. The
consent tables themselves are :mod:`blindrelay.protocol.consent`; what is here
is how an operation applies them.

A SEND (operation ``send``, SPEC §6.3, §7.3, §7.7), given its pair's state:

1. :func:`judge_send` — the decision, whether the envelope is a stranger's, and
   whether to read the sender's first-contact budget though nothing will be sent
   (a user's chat to an unknown handle or refused by a block: the same work as for
   a new stranger). The pair state is read
   before the recipient's existence is looked at; a badge only where
   :func:`needs_badge`.
2. Allowed: the recipient's queue length, its shares (:class:`QueueShares`) only
   if :func:`shares_matter` (most queues never need them), then :func:`queue_full`; not full and
   ``decision.first_contact``: take a token of the sender's
   :data:`FIRST_CONTACTS` budget, and refuse (:data:`~blindrelay.protocol.consent.REFUSE`)
   when it is empty — taken last, so a refusal spends nothing.
3. Refused or full: a remembered ``(sender, msg_id)`` answers first with its
   original time (:func:`envelope_digest` tells a resend from a reuse); else
   :func:`refuse_unless_allowed`, else QUEUE_FULL.
4. Accepted: the envelope and the remembered id, :func:`pair_after_send`, and
   ``decision.meter`` counted for :func:`metered_business` — all in the envelope's
   transaction.

A STATEMENT (operation ``apply_statement``, SPEC §7.4–7.6), given the signer's
and target's accounts: :func:`check_statement`, the nonce unseen,
:func:`check_block_targets` for a block, then :func:`statement_effect` on the
pair's state (and, for an unblock, whether the block it lifts went to the target,
and when the target registered if :func:`revokes_on_unblock`) says what to store,
purge and forward; :func:`families` names what the statement supersedes. An upgrade
from a relay before threat model T54's fix: :func:`consent_as_the_block_left_it`.

Not here: the consent tables (``protocol.consent``), signature checks
(``protocol.signed``), reading or writing anything (the back ends).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from blindrelay.protocol import limits
from blindrelay.protocol.consent import (
    REFUSE,
    CategoryConsent,
    CategoryState,
    Decision,
    PairState,
    Purge,
    Request,
    Verdict,
    after_accept,
    is_stranger,
    may_deliver,
)
from blindrelay.protocol.consent import apply_statement as transition
from blindrelay.protocol.errors import Forbidden, InvalidStatement, RecipientUnavailable
from blindrelay.protocol.frames import AccountKind
from blindrelay.protocol.signed import Action, ConsentStatement

from .operations import SendRules
from .records import Account

# --- consent decisions (SPEC §7.3, §7.7) ----------------------------------------

BADGE_DEPENDENT = frozenset({Request.CONSENT_REQUEST, Request.BUNDLE_FETCH})
"""What a business may do to a stranger only with a badge (SPEC §7.3); nothing else
reads the badge store, so notifications and replies cost no lookup."""


def needs_badge(sender_kind: str, request: Request) -> bool:
    """Whether deciding ``request`` needs to know if the sender holds a badge in force."""
    return sender_kind == AccountKind.BUSINESS and request in BADGE_DEPENDENT


def judge(
    sender: str,
    sender_kind: str,
    to: str,
    recipient_kind: str | None,
    request: Request,
    state: PairState,
    now: int,
    *,
    verified: bool = False,
    category: str | None = None,
    categories: frozenset[str] = frozenset(),
    message_request_max: int = limits.MESSAGE_REQUEST_MAX,
) -> Decision:
    """SPEC §7.3: the decision on the pair's ``state``; REFUSE when ``to`` does not exist
    (``recipient_kind`` None), after the same reads (SPEC §7.7)."""
    if recipient_kind is None:
        return REFUSE
    return may_deliver(
        sender=sender, recipient=to, sender_kind=sender_kind, recipient_kind=recipient_kind,
        request=request, state=state, now=now, category=category, categories=categories,
        sender_verified=verified, message_request_max=message_request_max,
    )  # fmt: skip


def refuse_unless_allowed(decision: Decision) -> None:
    """SPEC §7.7: every pair-dependent refusal is the one bare ERROR 400 (or 202)."""
    if decision.verdict is Verdict.FORBIDDEN:
        raise Forbidden()
    if decision.verdict is not Verdict.ALLOW:
        raise RecipientUnavailable()


# --- SEND (SPEC §6.3, §7.2–7.3, §8.4) ------------------------------------------------

FIRST_CONTACTS = "first_contacts"
"""The budget (token bucket kept by the store) of new strangers per sender (SPEC §7.3)."""

ONE_TIME_PREKEYS = "one_time_prekeys"
"""The budget of one-time prekeys handed out per owner (SPEC §5.3)."""

REGISTRATIONS = "registrations"
"""The budget of registrations per source address (SPEC §4.6.1), one for every relay
process sharing the store (operation ``take_budget``)."""

STATEMENTS = "statements"
"""The budget of accepted statements per signer (SPEC §10, threat model T64): one for
every relay process sharing the store, spent in the statement's own transaction."""

BUDGETS = frozenset({FIRST_CONTACTS, ONE_TIME_PREKEYS, REGISTRATIONS, STATEMENTS})


def judge_send(
    rules: SendRules,
    sender: str,
    sender_kind: str,
    to: str,
    recipient_kind: str | None,
    request: Request,
    category: str | None,
    categories: frozenset[str],
    state: PairState,
    now: int,
    *,
    verified: bool = False,
) -> tuple[Decision, bool, bool]:
    """Step 1 of a SEND (module docstring): (decision, stranger, probe).

    ``stranger``: the envelope counts towards the recipient's strangers' pool (SPEC
    §6.3). ``probe``: read the sender's first-contact budget though nothing will be
    sent — a user's chat refused while neither has written (to an unknown handle, or
    refused by a block) costs what one to a new stranger costs, so "no such handle" and
    "it blocks you" are the same work (SPEC §7.7, threat model T71). A plain tuple: this
    runs for every SEND, and a named one costs more to make.
    """
    decision = REFUSE if recipient_kind is None else may_deliver(
        sender=sender, recipient=to, sender_kind=sender_kind, recipient_kind=recipient_kind,
        request=request, state=state, now=now, category=category, categories=categories,
        sender_verified=verified, message_request_max=rules.message_request_max,
    )  # fmt: skip
    if decision.verdict is not Verdict.ALLOW:
        probe = sender_kind == AccountKind.USER and request is Request.CHAT and not state.wrote
        return decision, False, probe
    # SPEC §6.3: the strangers' pool is a user's; a business's customers are all
    # strangers to it, and the pool would shut every one of them out alike.
    stranger = (
        recipient_kind == AccountKind.USER
        and to not in state.wrote  # a contact: the common case, decided here
        and is_stranger(state, sender, to)
    )
    return decision, stranger, False


@dataclass(slots=True)
class QueueShares:
    """Who holds how much of one recipient's queue: envelopes per sender, and those
    from strangers (SPEC §6.3). Needed only for queues at least ``floor`` long
    (:func:`shares_matter`): below it no share can be reached."""

    floor: int
    strangers: int
    senders: dict[str, int]

    def change(self, sender: str, stranger: bool, delta: int) -> None:
        self.senders[sender] = self.senders.get(sender, 0) + delta
        if stranger:
            self.strangers += delta


def share_floor(rules: SendRules) -> int:
    """The queue length below which neither share can be reached."""
    per_sender, strangers = rules.queue_share_per_sender, rules.queue_share_strangers
    return per_sender if per_sender < strangers else strangers


def shares_matter(rules: SendRules, queued: int) -> bool:
    """Whether :func:`queue_full` needs the recipient's shares at this queue length
    (most queues are shorter: one comparison decides)."""
    if queued < rules.queue_share_per_sender and queued < rules.queue_share_strangers:
        return False
    return queued < rules.queue_cap


def queue_full(
    rules: SendRules,
    sender: str,
    stranger: bool,
    queued: int,
    shares: QueueShares | None,
    held: int = 0,
) -> bool:
    """SPEC §6.3.5 for a SEND the rules allow; ``shares`` is None when they do not
    matter at this length (:func:`shares_matter`; not checked again here: this runs
    for every SEND). ``queued`` and ``held`` count the room delivery leases set aside
    (SPEC §6.4.6, :mod:`.leases`): to the recipient, and of it the sender's.

    "The relay MUST refuse with 401 QUEUE_FULL an envelope that would take a
    recipient's undelivered envelopes past QUEUE_CAP_PER_RECIPIENT, the sender's own
    … past QUEUE_SHARE_PER_SENDER, or — for a user recipient and a sender that is a
    stranger to it — the strangers' … past QUEUE_SHARE_STRANGERS."
    """
    if queued >= rules.queue_cap:
        return True
    if shares is None:
        return False
    return shares.senders.get(sender, 0) + held >= rules.queue_share_per_sender or (
        stranger and shares.strangers >= rules.queue_share_strangers
    )


def pair_after_send(
    rules: SendRules, state: PairState, decision: Decision, now: int
) -> PairState | None:
    """The pair's new state once the envelope is accepted, or None when it is unchanged
    (a notification changes nothing, and nothing need be written)."""
    new_state = after_accept(state, decision, now, rules.service_window_ms)
    return None if new_state is state or new_state == state else new_state


def metered_business(sender: str, sender_kind: str, to: str) -> str:
    """SPEC §8.4: the business whose counter an accepted envelope with a meter
    (``decision.meter``, and its category) adds one to — the sender if it is one,
    else the recipient. "Counts MUST be committed in the same transaction as the
    envelope they count."
    """
    return sender if sender_kind == AccountKind.BUSINESS else to


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


# --- budgets (SPEC §5.3, §7.3) ----------------------------------------------------------

HOUR_MS = 3_600_000


def bucket_tokens(
    stored: tuple[float, int] | None, rate_per_h: float, burst: int, now: int
) -> float:
    """What a budget holds at ``now``, from its stored (tokens, at) — None is full."""
    tokens = float(burst)
    if stored is not None:
        refill = max(0, now - stored[1]) * rate_per_h / HOUR_MS
        tokens = min(tokens, stored[0] + refill)
    return tokens


def budget_wait_ms(tokens: float, rate_per_h: float) -> int:
    """Until a budget holding ``tokens`` (< 1) has one token again: 1 ms at least."""
    return max(1, math.ceil((1.0 - tokens) * HOUR_MS / rate_per_h))


def bucket_full_at(tokens: float, rate_per_h: float, burst: int, now: int) -> int:
    """When a budget holding ``tokens`` at ``now`` is full again (and may be forgotten)."""
    return now + math.ceil((burst - tokens) * HOUR_MS / rate_per_h)


# --- statements (SPEC §7.4–7.6) --------------------------------------------------------

STATEMENT_NONCE_KEEP_MS = 2 * limits.STATEMENT_SKEW_MS
"""How long an accepted nonce is remembered. A statement is accepted only within
``STATEMENT_SKEW_MS`` of the relay's clock, so one accepted at t was issued after
t − skew and is stale from t + 2 × skew on: a replay after that fails on time alone."""


def families(statement: ConsentStatement) -> list[str]:
    """The action families a statement is the latest word on (SPEC §7.6):
    ``consent:<category>`` per category, or ``block``."""
    if statement.is_consent:
        return [f"consent:{c}" for c in statement.categories or ()]
    return ["block"]


def check_statement(
    statement: ConsentStatement, signer: Account | None, target: Account | None
) -> None:
    """SPEC §7.4's checks that need the signer's and the target's accounts."""
    if signer is None or signer.identity_key != statement.signer_key:
        raise InvalidStatement("signer_key: identity key rotated")
    # "…whose action does not fit the signer's kind" → 500: it depends on the signer only.
    if statement.is_consent and signer.kind != AccountKind.USER:
        raise InvalidStatement("grant, deny and revoke are made by users")
    # "A grant, deny or revoke whose target is not a business — a user or a handle that
    # does not exist — gets ERROR 400": one refusal, so it tells neither kind nor existence.
    # A block or unblock of a handle nobody holds is kept like any other.
    if statement.is_consent and (target is None or target.kind != AccountKind.BUSINESS):
        raise RecipientUnavailable()


def check_block_targets(on_record: int | None, max_block_targets: int) -> None:
    """A block: "…once the signer has them on record for MAX_BLOCK_TARGETS accounts,
    existing or not" → 500. ``on_record`` is None when the target is one of them."""
    if on_record is not None and on_record >= max_block_targets:
        raise InvalidStatement(f"blocks on record for {on_record} accounts already")


@dataclass(frozen=True, slots=True)
class StatementEffect:
    """What an accepted statement changes, besides storing it."""

    state: PairState
    """The pair's new state."""
    purge: Purge
    """What to withdraw from the signer's queue, sent by the target (SPEC §7.4)."""
    to_target: bool
    """Forwarded or held back for the target, so listed to it (SPEC §7.5–7.6): the target
    is a business and, for an unblock, the block it lifts was too. Its undelivered
    receipts that this statement supersedes are withdrawn."""
    forward: bool
    """Queue the statement to the target as a receipt (SPEC §7.5)."""


def revokes_on_unblock(
    statement: ConsentStatement, signer_kind: str, target_kind: str | None, block_to_target: bool
) -> bool:
    """Whether ``statement`` lifts a user's block of a business made before the business
    registered the handle — the block went nowhere (``block_to_target`` false), and a
    target that is a business now was no account then (accounts never change kind) — so
    that its revocation is applied now, counted from the registration (SPEC §7.4, threat
    model T57). The back end then reads when the target registered."""
    return (
        statement.action == Action.UNBLOCK
        and not block_to_target
        and signer_kind == AccountKind.USER
        and target_kind == AccountKind.BUSINESS
    )


def statement_effect(
    statement: ConsentStatement,
    signer_kind: str,
    target_kind: str | None,
    state: PairState,
    now: int,
    cooldown_ms: int,
    *,
    block_to_target: bool,
    target_registered_at: int | None,
) -> StatementEffect:
    """The transition table on the pair's ``state``; raises InvalidStatement (500) where
    the table has no entry.

    ``block_to_target``: for an unblock, whether the block it lifts (the signer's in force
    on the target) was forwarded or held back for the target; read by the back end from
    what it stored with that block, ignored for other actions. ``target_registered_at``:
    the target account's ``created_at``, read by the back end where
    :func:`revokes_on_unblock` says so (None elsewhere)."""
    action = Action(statement.action)
    revocation_from = None
    if revokes_on_unblock(statement, signer_kind, target_kind, block_to_target):
        if target_registered_at is None:
            raise ValueError("an unblock of a block made before the business registered")
        revocation_from = target_registered_at
    new_state, purge = transition(
        state,
        action=action,
        signer=statement.signer,
        categories=frozenset(statement.categories or ()),
        signer_is_user_blocking_business=(
            action is Action.BLOCK
            and signer_kind == AccountKind.USER
            and target_kind == AccountKind.BUSINESS
        ),
        now=now,
        cooldown_ms=cooldown_ms,
        revocation_from=revocation_from,
    )
    # SPEC §7.5: to a business target only (every consent statement has one); an unblock
    # only if its block went too: one of a handle nobody held then went nowhere, and its
    # unblock, accepted only while a block is in force, would tell the business that
    # registered the handle since that the signer had blocked it before (T47).
    to_target = target_kind == AccountKind.BUSINESS and (
        action is not Action.UNBLOCK or block_to_target
    )
    # Never while the target blocks the signer ("nothing from the blocked account
    # reaches the blocker"): held back, and listed to it (§7.6).
    forward = to_target and statement.target not in new_state.blockers
    return StatementEffect(new_state, purge, to_target, forward)


# --- upgrades (threat model T54) ----------------------------------------------------------


CONSENT_WHILE_BLOCKING = (
    "SELECT f.signer, f.target, f.family, f.seq, b.accepted_at FROM statements_in_force f"
    " JOIN statements_in_force k ON k.signer = f.signer AND k.target = f.target"
    "  AND k.family = 'block'"
    " JOIN statements b ON b.seq = k.seq AND b.action = 'block'"
    " WHERE f.family LIKE 'consent:%' AND f.seq > k.seq"
)
"""Every consent statement in force numbered after its signer's block in force on its
target, so accepted while that block was (threat model T54; only a relay before the fix
accepted one): signer, target, family, number, and when the block was accepted. Data,
not I/O: both back ends' upgrades ask it (their tables have the same names and columns
here), so that they clear the same rows."""


def by_pair(found: Iterable[Sequence[Any]]) -> dict[tuple[str, str], tuple[set[str], int]]:
    """:data:`CONSENT_WHILE_BLOCKING`'s rows by pair: the categories they name, and when
    the block was accepted — what :func:`consent_as_the_block_left_it` takes."""
    named: dict[tuple[str, str], tuple[set[str], int]] = {}
    for signer, target, family, _seq, blocked_at in found:
        categories, _ = named.setdefault((signer, target), (set(), int(blocked_at)))
        categories.add(family.removeprefix("consent:"))
    return named


def consent_as_the_block_left_it(
    state: PairState, categories: Iterable[str], blocked_at: int
) -> PairState:
    """A pair's ``state`` as if the relay had refused the consent statements its user made
    while blocking the business, naming ``categories`` — as every relay has since T54's
    fix (SPEC §7.4): each as the block, accepted at ``blocked_at``, left it,
    ``revoked(blocked_at + CONSENT_COOLDOWN_MS)``.

    For an upgrade, which finds them by their number: a consent statement in force
    numbered after the signer's block in force on the same target was accepted while
    that block was. The protocol's cooldown, not one configured: an upgrade runs before a
    relay's configuration is read, and the cooldown matters only if the user unblocks
    within it. A block made before the business registered revoked nothing; its unblock
    revokes from the registration instead (:func:`revokes_on_unblock`), which replaces
    this."""
    revoked = CategoryConsent(CategoryState.REVOKED, blocked_at + limits.CONSENT_COOLDOWN_MS)
    consent = dict(state.consent)
    for category in sorted(categories):
        consent[category] = revoked
    return replace(state, consent=consent)
