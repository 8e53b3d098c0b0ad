"""Consent, blocking and the customer-service window as data (SPEC §7).

The rules this module obeys, quoted from SPEC §7.3: whether an envelope or a
bundle fetch is allowed "is one pure function of the pair's state and the
relay's clock". That function is :func:`may_deliver`. The relay calls it to
enforce, the conformance tests call it to predict, and a test re-derives the
spec's table from it — one source for all three.

Theory of operation. A *pair* is two accounts. For every pair the relay keeps
who blocks whom and who has written to whom (a chat from one to the other was
accepted), with the number of *message requests* sent while only one side had
written; for a business–user pair also, per category, a :class:`CategoryState`
with a cooldown end, at most one pending request and the window end. Statements
(signed by the acting account, :mod:`.signed`) move that state through
:data:`CONSENT_TRANSITIONS` and :data:`BLOCK_TRANSITIONS`; a missing entry is
a refused statement (h11 style). :func:`apply_statement` returns the new state
and what must be purged from the queue at once.

Not here: signatures and encodings (:mod:`.signed`), storage (server), or the
relay's clock — ``now`` is always a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum

from . import limits
from .errors import InvalidStatement
from .frames import AccountKind, Intent
from .signed import Action


class CategoryState(StrEnum):
    NONE = "none"
    GRANTED = "granted"
    DENIED = "denied"
    REVOKED = "revoked"


CONSENT_TRANSITIONS: dict[CategoryState, dict[Action, CategoryState]] = {
    CategoryState.NONE: {Action.GRANT: CategoryState.GRANTED, Action.DENY: CategoryState.DENIED},
    CategoryState.GRANTED: {Action.REVOKE: CategoryState.REVOKED},
    CategoryState.DENIED: {Action.GRANT: CategoryState.GRANTED},
    CategoryState.REVOKED: {Action.GRANT: CategoryState.GRANTED},
}
"""SPEC §7.4: a category's next state per statement, keyed by its *effective*
state (:meth:`CategoryConsent.effective`: a cooldown that has ended counts as
none). Every entry changes the state; a statement that would change nothing
(granting what is granted, denying what is still cooling down) has no entry,
nor have revoking what was never granted or denying what is granted (that is a
revoke): refused."""

BLOCK_TRANSITIONS: dict[bool, dict[Action, bool]] = {
    False: {Action.BLOCK: True},
    True: {Action.UNBLOCK: False},
}
"""SPEC §7.4: whether the signer blocks the target. Blocking twice or
unblocking what is not blocked has no entry: refused."""

COOLDOWN_STATES = frozenset({CategoryState.DENIED, CategoryState.REVOKED})


@dataclass(frozen=True, slots=True)
class CategoryConsent:
    state: CategoryState = CategoryState.NONE
    until: int = 0
    """End of the cooldown for DENIED and REVOKED; 0 otherwise."""

    def in_cooldown(self, now: int) -> bool:
        return self.state in COOLDOWN_STATES and now < self.until

    def effective(self, now: int) -> CategoryState:
        """The state statements move from: a denial or revocation whose cooldown has
        ended is as if nothing had been said (SPEC §7.4)."""
        if self.state in COOLDOWN_STATES and not self.in_cooldown(now):
            return CategoryState.NONE
        return self.state


NO_CONSENT = CategoryConsent()


@dataclass(frozen=True, slots=True)
class PairState:
    """What the relay knows about one pair of accounts (SPEC §7.2).

    ``consent``, ``pending`` and ``window_until`` are only meaningful for a
    business–user pair; ``blockers`` holds the handles in the pair that block
    the other one.
    """

    consent: Mapping[str, CategoryConsent] = field(default_factory=dict)
    pending: frozenset[str] = frozenset()
    window_until: int = 0
    blockers: frozenset[str] = frozenset()
    wrote: frozenset[str] = frozenset()
    """Handles in the pair that have written to the other: the relay accepted a chat
    from it to the other one (SPEC §7.2)."""
    requests: int = 0
    """Chats accepted from the one handle in ``wrote`` while the other had not written
    back: its message requests (SPEC §7.3). Meaningless once both have written."""

    def category(self, name: str) -> CategoryConsent:
        return self.consent.get(name, NO_CONSENT)

    @property
    def blocked(self) -> bool:
        return bool(self.blockers)

    def window_open(self, now: int) -> bool:
        return now < self.window_until

    def granted(self) -> frozenset[str]:
        return frozenset(c for c, v in self.consent.items() if v.state is CategoryState.GRANTED)

    def asking_allowed(self, categories: frozenset[str], now: int) -> bool:
        """SPEC §7.3: no pending request; none asked for is granted or cooling down."""
        if self.pending or not categories:
            return False
        return all(
            self.category(c).state is not CategoryState.GRANTED
            and not self.category(c).in_cooldown(now)
            for c in categories
        )


INITIAL = PairState()


class Request(StrEnum):
    """What a sender asks the relay to do towards a recipient."""

    CHAT = Intent.CHAT.value
    NOTIFICATION = Intent.NOTIFICATION.value
    CONSENT_REQUEST = Intent.CONSENT_REQUEST.value
    BUNDLE_FETCH = "bundle_fetch"


class Verdict(Enum):
    ALLOW = "allow"
    REFUSE = "refuse"
    """ERROR 400, identical for every reason (SPEC §7.7)."""
    FORBIDDEN = "forbidden"
    """ERROR 202: the sender's kind may never do this, whoever the recipient is; says
    nothing about the pair or the recipient."""


class Meter(StrEnum):
    """How an accepted envelope is counted (SPEC §8.4)."""

    NOTIFICATION = "notification"
    SERVICE_REPLY = "service_reply"
    USER_INITIATED = "user_initiated"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    meter: Meter | None = None
    opens_window: bool = False
    """A user's chat to a business (re)opens the customer-service window."""
    sets_pending: frozenset[str] | None = None
    writer: str | None = None
    """A chat from a handle that had not written to the other yet: it now has."""
    message_request: bool = False
    """A user's chat to a user who has not written to it: counted in ``requests``."""
    first_contact: bool = False
    """The first of those: it opens a conversation with a new stranger, which costs a
    token of the sender's first-contact budget (``FIRST_CONTACTS_PER_H``); the relay
    refuses it with the same 400 when that budget is spent (SPEC §7.3)."""

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


ALLOW = Decision(Verdict.ALLOW)
REFUSE = Decision(Verdict.REFUSE)
FORBIDDEN = Decision(Verdict.FORBIDDEN)


def may_deliver(
    *,
    sender: str,
    recipient: str,
    sender_kind: str,
    recipient_kind: str,
    request: Request | str,
    state: PairState,
    now: int,
    category: str | None = None,
    categories: frozenset[str] = frozenset(),
    sender_verified: bool = False,
    message_request_max: int = limits.MESSAGE_REQUEST_MAX,
) -> Decision:
    """SPEC §7.3: may ``sender`` do ``request`` towards ``recipient`` right now?

    ``sender_verified``: a business with a badge in force for its current key
    (SPEC §8.1); only consent requests and a business's bundle fetches read it.
    ``message_request_max`` is the relay's *default* ``MESSAGE_REQUEST_MAX``.
    """
    request = Request(request)
    business_only = request in (Request.NOTIFICATION, Request.CONSENT_REQUEST)
    if sender_kind == AccountKind.USER:
        if business_only:
            return FORBIDDEN
        if state.blocked:
            return REFUSE
        if request is not Request.CHAT:
            return ALLOW  # a bundle fetch
        writer = None if sender in state.wrote else sender
        if recipient_kind == AccountKind.BUSINESS:
            return Decision(
                Verdict.ALLOW, meter=Meter.USER_INITIATED, opens_window=True, writer=writer
            )
        if recipient in state.wrote:
            return ALLOW if writer is None else Decision(Verdict.ALLOW, writer=writer)
        # A message request: the recipient has never written to the sender.
        if writer is None and state.requests >= message_request_max:
            return REFUSE
        return Decision(
            Verdict.ALLOW, writer=writer, message_request=True, first_contact=writer is not None
        )
    if recipient_kind == AccountKind.BUSINESS:
        # Business → business is not part of v1. A refusal that depends on the
        # recipient's kind is the one 400, never 202: it must not tell a
        # business from an unknown handle (SPEC §7.7).
        return REFUSE
    if state.blocked:
        return REFUSE
    if request is Request.CHAT:
        if state.window_open(now):
            writer = None if sender in state.wrote else sender
            return Decision(Verdict.ALLOW, meter=Meter.SERVICE_REPLY, writer=writer)
        return REFUSE
    if request is Request.NOTIFICATION:
        if category is not None and state.category(category).state is CategoryState.GRANTED:
            return Decision(Verdict.ALLOW, meter=Meter.NOTIFICATION)
        return REFUSE
    # SPEC §7.3 "may ask": "the business is verified, or the user has written to it, or
    # the user has granted it some category" — no cold requests from unverified ones.
    may_ask = sender_verified or recipient in state.wrote or bool(state.granted())
    if request is Request.CONSENT_REQUEST:
        if may_ask and state.asking_allowed(categories, now):
            return Decision(Verdict.ALLOW, sets_pending=categories)
        return REFUSE
    # Bundle fetch: only when there is something the business may go on to send.
    may_ask_something = may_ask and any(
        state.asking_allowed(frozenset({c}), now) for c in limits.CATEGORIES
    )
    if state.granted() or state.window_open(now) or state.pending or may_ask_something:
        return ALLOW
    return REFUSE


def is_stranger(state: PairState, sender: str, recipient: str) -> bool:
    """SPEC §6.3: whether ``sender`` is a stranger to ``recipient`` — the recipient has
    not written to it and holds none of its consent. A business allowed to notify has a
    grant and one allowed to reply has the window, which the user opened by writing: a
    business that may send at all, other than asking, is no stranger."""
    if recipient in state.wrote:
        return False
    return not any(c.state is CategoryState.GRANTED for c in state.consent.values())


def after_accept(state: PairState, decision: Decision, now: int, window_ms: int) -> PairState:
    """The pair's state once an allowed envelope is committed (``state`` itself when
    nothing changes: the relay then writes nothing)."""
    if decision.opens_window:
        state = replace(state, window_until=now + window_ms)
    if decision.sets_pending is not None:
        state = replace(state, pending=decision.sets_pending)
    if decision.writer is not None:
        state = replace(state, wrote=state.wrote | {decision.writer})
    if decision.message_request:
        state = replace(state, requests=state.requests + 1)
    return state


@dataclass(frozen=True, slots=True)
class Purge:
    """Undelivered envelopes to delete when a statement takes effect (SPEC §7.4)."""

    everything_from_target: bool = False
    notification_categories: frozenset[str] = frozenset()


NO_PURGE = Purge()


ACTION_STATES: dict[Action, CategoryState] = {
    Action.GRANT: CategoryState.GRANTED,
    Action.DENY: CategoryState.DENIED,
    Action.REVOKE: CategoryState.REVOKED,
}
"""The state each consent action leaves a category in: every entry of
:data:`CONSENT_TRANSITIONS` for an action leads there, whatever it comes from."""


def apply_statement(
    state: PairState,
    *,
    action: Action | str,
    signer: str,
    categories: frozenset[str],
    signer_is_user_blocking_business: bool,
    now: int,
    cooldown_ms: int,
    revocation_from: int | None = None,
) -> tuple[PairState, Purge]:
    """New pair state and purge after an accepted statement; refuses by table.
    ``revocation_from``: as :func:`accepted_effect`'s."""
    action = Action(action)
    if action in (Action.BLOCK, Action.UNBLOCK):
        blocking = signer in state.blockers
        if action not in BLOCK_TRANSITIONS[blocking]:
            raise InvalidStatement(f"{action.value}: not allowed when blocking={blocking}")
    else:
        # SPEC §7.4: no consent statement while the signer blocks the target. The block
        # refuses everything the business could send under it, and a receipt it could
        # not act on would tell it of a block it was never forwarded — one made before
        # it registered (T54; the signer's own state decides, so this tells it nothing).
        if signer in state.blockers:
            raise InvalidStatement(f"{action.value}: the signer blocks the target")
        # "A statement that needs a missing entry is refused whole": a partly
        # effective one too, so a statement in force means what it says for each
        # category it names.
        for c in sorted(categories):
            current = state.category(c).effective(now)
            if action not in CONSENT_TRANSITIONS[current]:
                raise InvalidStatement(f"{action.value} {c}: not allowed when {current.value}")
    return accepted_effect(
        state, action=action, signer=signer, categories=categories,
        signer_is_user_blocking_business=signer_is_user_blocking_business, now=now,
        cooldown_ms=cooldown_ms, revocation_from=revocation_from,
    )  # fmt: skip


def accepted_effect(
    state: PairState,
    *,
    action: Action | str,
    signer: str,
    categories: frozenset[str],
    signer_is_user_blocking_business: bool,
    now: int,
    cooldown_ms: int,
    revocation_from: int | None = None,
) -> tuple[PairState, Purge]:
    """What a statement the relay accepted did to ``state``, without asking the table
    again: each category it names in its action's state (:data:`ACTION_STATES`), the
    signer among the blockers or not.

    A user's block made before the business registered revoked nothing; it takes effect
    as one made at the registration, ``revocation_from``, applied by the unblock that
    lifts it (SPEC §7.4, T57): until then nothing could change the pair's consent.

    For a business folding its receipts (SPEC §7.5): the relay withdraws a receipt
    that a newer statement replaced before it was delivered, so a revoke can reach the
    business without the grant it revokes, and the table, from what the business
    saw, would refuse it.
    """
    action = Action(action)
    if action is Action.UNBLOCK:
        state = replace(state, blockers=state.blockers - {signer})
        if revocation_from is not None:
            state = _revoke_everything(state, revocation_from + cooldown_ms)
        return state, NO_PURGE
    if action is Action.BLOCK:
        state = replace(state, blockers=state.blockers | {signer})
        if signer_is_user_blocking_business:
            state = _revoke_everything(state, now + cooldown_ms)
        return state, Purge(everything_from_target=True)
    new = ACTION_STATES[action]
    until = now + cooldown_ms if new in COOLDOWN_STATES else 0
    consent = dict(state.consent)
    for c in sorted(categories):
        consent[c] = CategoryConsent(new, until)
    pending = state.pending if action is Action.REVOKE else frozenset()
    purge = (
        Purge(notification_categories=frozenset(categories)) if action is Action.REVOKE
        else NO_PURGE
    )  # fmt: skip
    return replace(state, consent=consent, pending=pending), purge


def _revoke_everything(state: PairState, until: int) -> PairState:
    """A user's block of a business (SPEC §7.4): "every category becomes
    revoked(now + CONSENT_COOLDOWN_MS) and a pending request is cleared"."""
    revoked = CategoryConsent(CategoryState.REVOKED, until)
    return replace(state, consent={c: revoked for c in limits.CATEGORIES}, pending=frozenset())


# --- the spec's tables, derived ---------------------------------------------

T_REF = 1_000_000_000_000
"""A fixed 'now' for the canonical states below."""

USER, BUSINESS = "user", "business"
"""The handles of the canonical pairs."""

CANONICAL_STATES: dict[str, PairState] = {
    "none": INITIAL,
    "requested (pending)": PairState(pending=frozenset({"utility"})),
    "granted utility": PairState(consent={"utility": CategoryConsent(CategoryState.GRANTED)}),
    "denied, in cooldown": PairState(
        consent={c: CategoryConsent(CategoryState.DENIED, T_REF + 1) for c in limits.CATEGORIES}
    ),
    "revoked, in cooldown": PairState(
        consent={c: CategoryConsent(CategoryState.REVOKED, T_REF + 1) for c in limits.CATEGORIES}
    ),
    "window open (else none)": PairState(window_until=T_REF + 1, wrote=frozenset({USER})),
    "window expired (else none)": PairState(window_until=T_REF, wrote=frozenset({USER})),
    "blocked by the user": PairState(blockers=frozenset({USER})),
}
"""The pair states of SPEC §7.3's table, as the business sees them at ``T_REF``. A
window exists only because the user wrote, so those states have the user in ``wrote``."""

BUSINESS_REQUESTS: dict[str, tuple[Request, str | None, frozenset[str], bool]] = {
    "consent_request, verified": (
        Request.CONSENT_REQUEST, None, frozenset(limits.CATEGORIES), True
    ),
    "consent_request, unverified": (
        Request.CONSENT_REQUEST, None, frozenset(limits.CATEGORIES), False
    ),
    "notification utility": (Request.NOTIFICATION, "utility", frozenset(), False),
    "notification marketing": (Request.NOTIFICATION, "marketing", frozenset(), False),
    "service reply": (Request.CHAT, None, frozenset(), False),
    "bundle fetch, verified": (Request.BUNDLE_FETCH, None, frozenset(), True),
    "bundle fetch, unverified": (Request.BUNDLE_FETCH, None, frozenset(), False),
}  # fmt: skip
"""The columns: a notification or a service reply does not depend on the badge."""


def business_decision_table() -> dict[str, dict[str, bool]]:
    """State → business request → allowed, as SPEC §7.3 prints it.

    A consent request counts as allowed when asking for *some* category is
    (the spec marks that "✓ (marketing only)" for a partly granted pair).
    """
    table: dict[str, dict[str, bool]] = {}
    for name, state in CANONICAL_STATES.items():
        row: dict[str, bool] = {}
        for column, (request, category, cats, verified) in BUSINESS_REQUESTS.items():
            asked = [frozenset({c}) for c in cats] or [frozenset()]
            row[column] = any(
                may_deliver(
                    sender=BUSINESS, recipient=USER, sender_kind="business",
                    recipient_kind="user", request=request, state=state, now=T_REF,
                    category=category, categories=one, sender_verified=verified,
                ).allowed
                for one in asked
            )  # fmt: skip
        table[name] = row
    return table


SENDER, RECIPIENT = "sender", "recipient"
"""The handles of the canonical user–user pairs."""

USER_STATES: dict[str, PairState] = {
    "neither has written": INITIAL,
    "the sender wrote, fewer than MESSAGE_REQUEST_MAX": PairState(
        wrote=frozenset({SENDER}), requests=limits.MESSAGE_REQUEST_MAX - 1
    ),
    "the sender wrote MESSAGE_REQUEST_MAX, no answer": PairState(
        wrote=frozenset({SENDER}), requests=limits.MESSAGE_REQUEST_MAX
    ),
    "the recipient has written to the sender": PairState(wrote=frozenset({RECIPIENT})),
    "both have written": PairState(wrote=frozenset({SENDER, RECIPIENT})),
    "either blocks the other": PairState(blockers=frozenset({RECIPIENT})),
}
"""The pair states of SPEC §7.3's user → user table, at ``T_REF``."""


def user_decision_table() -> dict[str, str]:
    """State → what a user's chat to another user is, as SPEC §7.3 prints it: ``✗``
    (refused), ``✓`` (allowed), ``✓ request`` (a message request) or ``✓ request, new``
    (one that opens a conversation with a new stranger)."""
    table: dict[str, str] = {}
    for name, state in USER_STATES.items():
        decision = may_deliver(
            sender=SENDER, recipient=RECIPIENT, sender_kind="user", recipient_kind="user",
            request=Request.CHAT, state=state, now=T_REF,
        )  # fmt: skip
        if not decision.allowed:
            table[name] = "✗"
        elif decision.first_contact:
            table[name] = "✓ request, new"
        elif decision.message_request:
            table[name] = "✓ request"
        else:
            table[name] = "✓"
    return table
