"""SPEC §7: the consent tables and may_deliver, and the spec's table derived from them."""

from __future__ import annotations

import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.consent import (
    ACTION_STATES,
    BUSINESS_REQUESTS,
    CONSENT_TRANSITIONS,
    INITIAL,
    NO_PURGE,
    CategoryConsent,
    CategoryState,
    Meter,
    PairState,
    Request,
    Verdict,
    accepted_effect,
    after_accept,
    apply_statement,
    business_decision_table,
    is_stranger,
    may_deliver,
    user_decision_table,
)
from blindrelay.protocol.errors import InvalidStatement
from blindrelay.protocol.signed import Action

from .spec import section, table_rows

NOW = 1_800_000_000_000
DAY = 24 * 3600 * 1000


def decide(
    request: str,
    state: PairState = INITIAL,
    *,
    sender: str = "business",
    recipient: str = "user",
    now: int = NOW,
    category: str | None = None,
    categories: frozenset[str] = frozenset(),
    verified: bool = True,
):
    """``sender``/``recipient`` are the kinds, and the handles are named after them."""
    handles = {"user": "user", "business": "business"} if sender != recipient else {}
    return may_deliver(
        sender=handles.get(sender, "sender"),
        recipient=handles.get(recipient, "recipient"),
        sender_kind=sender,
        recipient_kind=recipient,
        request=request,
        state=state,
        now=now,
        category=category,
        categories=categories,
        sender_verified=verified,
    )


def apply(
    state: PairState,
    action: str,
    categories: tuple[str, ...] = (),
    *,
    signer: str = "alice",
    user_blocks_business: bool = False,
    now: int = NOW,
):
    return apply_statement(
        state,
        action=action,
        signer=signer,
        categories=frozenset(categories),
        signer_is_user_blocking_business=user_blocks_business,
        now=now,
        cooldown_ms=limits.CONSENT_COOLDOWN_MS,
    )


def test_spec_table_is_derived_from_may_deliver() -> None:
    rows = table_rows(section(7), "pair state")
    header = list(BUSINESS_REQUESTS)
    documented = {
        r[0]: {h: cell.startswith("✓") for h, cell in zip(header, r[1:], strict=True)} for r in rows
    }
    assert documented == business_decision_table()
    assert "| pair state | " + " | ".join(header) + " |" in section(7)


def test_spec_user_table_is_derived_from_may_deliver() -> None:
    rows = table_rows(section(7), "user pair state")
    assert {r[0]: r[1] for r in rows} == user_decision_table()


def test_user_to_user_chat_is_free_of_consent_but_obeys_blocks() -> None:
    assert decide("chat", sender="user", recipient="user").verdict is Verdict.ALLOW
    blocked = PairState(blockers=frozenset({"bob"}))
    assert decide("chat", blocked, sender="user", recipient="user").verdict is Verdict.REFUSE


def test_user_writing_to_business_opens_the_service_window() -> None:
    decision = decide("chat", sender="user", recipient="business")
    assert decision.opens_window and decision.meter is Meter.USER_INITIATED
    state = after_accept(INITIAL, decision, NOW, limits.SERVICE_WINDOW_MS)
    assert (
        decide("chat", state, now=NOW + limits.SERVICE_WINDOW_MS - 1).meter is Meter.SERVICE_REPLY
    )
    assert decide("chat", state, now=NOW + limits.SERVICE_WINDOW_MS).verdict is Verdict.REFUSE


def test_a_service_reply_makes_the_business_a_writer() -> None:
    """SPEC §7.3, on accepting a service reply: "counted service_replies; the business has
    written" (§7.2: a handle is added when the relay accepts a chat from it)."""
    state = PairState(window_until=NOW + 1, wrote=frozenset({"user"}))
    decision = decide("chat", state)
    assert decision.meter is Meter.SERVICE_REPLY and decision.writer == "business"
    after = after_accept(state, decision, NOW, limits.SERVICE_WINDOW_MS)
    assert after.wrote == frozenset({"user", "business"})


def test_a_later_user_message_refreshes_the_window() -> None:
    decision = decide("chat", sender="user", recipient="business")
    state = after_accept(INITIAL, decision, NOW, limits.SERVICE_WINDOW_MS)
    state = after_accept(state, decision, NOW + DAY - 1, limits.SERVICE_WINDOW_MS)
    assert state.window_until == NOW + DAY - 1 + limits.SERVICE_WINDOW_MS


@pytest.mark.parametrize("request_", ["notification", "consent_request"])
@pytest.mark.parametrize("recipient", ["user", "business"])
def test_users_may_never_send_business_intents(request_: str, recipient: str) -> None:
    assert (
        decide(
            request_,
            sender="user",
            recipient=recipient,
            category="utility",
            categories=frozenset({"utility"}),
        ).verdict
        is Verdict.FORBIDDEN
    )


@pytest.mark.parametrize("request_", list(Request))
def test_business_to_business_is_refused_like_an_unknown_recipient(request_: Request) -> None:
    """SPEC §7.7: the refusal depends on the recipient's kind, so it is the one 400."""
    assert decide(request_, recipient="business", category="utility").verdict is Verdict.REFUSE


def test_notification_needs_that_categorys_grant_and_is_billable() -> None:
    granted = PairState(consent={"utility": CategoryConsent(CategoryState.GRANTED)})
    assert decide("notification", granted, category="utility").meter is Meter.NOTIFICATION
    assert decide("notification", granted, category="marketing").verdict is Verdict.REFUSE


def test_consent_request_sets_pending_and_blocks_a_second_request() -> None:
    decision = decide("consent_request", categories=frozenset({"utility"}))
    assert decision.sets_pending == frozenset({"utility"})
    state = after_accept(INITIAL, decision, NOW, limits.SERVICE_WINDOW_MS)
    assert (
        decide("consent_request", state, categories=frozenset({"marketing"})).verdict
        is Verdict.REFUSE
    )


def test_grant_needs_no_request_and_clears_pending() -> None:
    state, _ = apply(PairState(pending=frozenset({"utility"})), "grant", ("utility",))
    assert state.category("utility").state is CategoryState.GRANTED and not state.pending


def test_denial_starts_a_cooldown_after_which_the_business_may_ask_again() -> None:
    state, _ = apply(PairState(pending=frozenset({"marketing"})), "deny", ("marketing",))
    cats = frozenset({"marketing"})
    assert decide("consent_request", state, categories=cats).verdict is Verdict.REFUSE
    later = NOW + limits.CONSENT_COOLDOWN_MS
    assert decide("consent_request", state, categories=cats, now=later).verdict is Verdict.ALLOW


def test_revoke_purges_queued_notifications_of_those_categories() -> None:
    granted, _ = apply(INITIAL, "grant", ("utility", "marketing"))
    state, purge = apply(granted, "revoke", ("marketing",))
    assert (
        purge.notification_categories == frozenset({"marketing"})
        and not purge.everything_from_target
    )
    assert decide("notification", state, category="marketing").verdict is Verdict.REFUSE
    assert decide("notification", state, category="utility").verdict is Verdict.ALLOW


def test_user_blocking_a_business_revokes_everything_and_purges_its_queue() -> None:
    granted, _ = apply(PairState(window_until=NOW + DAY), "grant", ("utility",))
    state, purge = apply(granted, "block", signer="alice", user_blocks_business=True)
    assert purge.everything_from_target
    assert all(state.category(c).state is CategoryState.REVOKED for c in limits.CATEGORIES)
    for request_ in Request:
        assert (
            decide(request_, state, category="utility", categories=frozenset({"utility"})).verdict
            is Verdict.REFUSE
        )


def test_unblock_does_not_restore_consent() -> None:
    granted, _ = apply(INITIAL, "grant", ("utility",))
    blocked, _ = apply(granted, "block", user_blocks_business=True)
    unblocked, purge = apply(blocked, "unblock")
    assert not unblocked.blocked and purge.everything_from_target is False
    assert decide("notification", unblocked, category="utility").verdict is Verdict.REFUSE


def test_unblocking_a_block_made_before_the_business_existed_revokes_from_then() -> None:
    """SPEC §7.4, T57: such a block revoked nothing when made (its target was no business);
    lifted, it leaves what a block made at the registration would have left."""
    registered = NOW - 10 * DAY
    pre_blocked, _ = apply(INITIAL, "block")
    state, purge = apply_statement(
        pre_blocked, action="unblock", signer="alice", categories=frozenset(),
        signer_is_user_blocking_business=False, now=NOW,
        cooldown_ms=limits.CONSENT_COOLDOWN_MS, revocation_from=registered,
    )  # fmt: skip
    late_blocked, _ = apply(INITIAL, "block", user_blocks_business=True, now=registered)
    assert state == apply(late_blocked, "unblock")[0] and purge == NO_PURGE
    for request_ in ("consent_request", "bundle_fetch"):
        asked = decide(request_, state, categories=frozenset({"utility"}))
        assert asked.verdict is Verdict.REFUSE
        later = registered + limits.CONSENT_COOLDOWN_MS
        assert decide(request_, state, now=later, categories=frozenset({"utility"})).allowed


def test_one_accounts_unblock_does_not_lift_the_others_block() -> None:
    state, _ = apply(INITIAL, "block", signer="alice")
    state, _ = apply(state, "block", signer="bob")
    state, _ = apply(state, "unblock", signer="alice")
    assert state.blocked


@pytest.mark.parametrize("action", ["grant", "deny", "revoke"])
def test_no_consent_statement_while_the_signer_blocks_the_target(action: str) -> None:
    """SPEC §7.4, T54: a grant, deny or revoke by an account that blocks its target is
    refused (500), whatever the categories' states; the target's block of the signer
    refuses nothing — the signer must not learn of it from a refusal."""
    for start in (INITIAL, PairState(consent={"utility": CategoryConsent(CategoryState.GRANTED)})):
        blocked, _ = apply(start, "block", signer="alice")
        with pytest.raises(InvalidStatement, match="blocks the target"):
            apply(blocked, action, ("utility",), signer="alice")
    by_target, _ = apply(INITIAL, "block", signer="shop")
    for move in (("grant", "revoke"), ("deny",)):
        state = by_target
        for step in move:
            state, _ = apply(state, step, ("utility",), signer="alice")
    assert state.blockers == frozenset({"shop"})


@pytest.mark.parametrize(
    ("start", "action"), [(CategoryState.NONE, Action.REVOKE), (CategoryState.GRANTED, Action.DENY)]
)
def test_missing_transition_is_a_refused_statement(start: CategoryState, action: Action) -> None:
    assert action not in CONSENT_TRANSITIONS[start]
    with pytest.raises(InvalidStatement):
        apply(PairState(consent={"utility": CategoryConsent(start)}), action, ("utility",))


@pytest.mark.parametrize(("first", "second"), [("block", "block"), ("unblock", None)])
def test_blocking_twice_or_unblocking_nothing_is_refused(first: str, second: str | None) -> None:
    with pytest.raises(InvalidStatement):
        state, _ = apply(INITIAL, first)
        apply(state, second or first)


def test_bundle_fetch_is_refused_when_the_business_could_send_nothing() -> None:
    denied = PairState(
        consent={c: CategoryConsent(CategoryState.DENIED, NOW + 1) for c in limits.CATEGORIES}
    )
    assert decide("bundle_fetch", denied).verdict is Verdict.REFUSE
    assert decide("bundle_fetch", denied, now=NOW + 1).verdict is Verdict.ALLOW


def test_spec_transition_table_is_the_codes() -> None:
    rows = table_rows(section(7), "category state")
    documented = {
        CategoryState(r[0]): {
            Action(a): CategoryState(cell)
            for a, cell in zip(["grant", "deny", "revoke"], r[1:], strict=True)
            if cell != "—"
        }
        for r in rows
    }
    assert documented == CONSENT_TRANSITIONS


@pytest.mark.parametrize(
    ("start", "action"),
    [
        (CategoryConsent(CategoryState.GRANTED), Action.GRANT),
        (CategoryConsent(CategoryState.DENIED, NOW + 1), Action.DENY),
        (CategoryConsent(CategoryState.REVOKED, NOW + 1), Action.DENY),
        (CategoryConsent(CategoryState.REVOKED, NOW + 1), Action.REVOKE),
    ],
)
def test_a_statement_that_changes_nothing_has_no_entry(
    start: CategoryConsent, action: Action
) -> None:
    """SPEC §7.4: every entry changes the category; no-ops (issue 13 item 5) are refused."""
    with pytest.raises(InvalidStatement):
        apply(PairState(consent={"utility": start}), action, ("utility",))


def test_a_cooldown_that_has_ended_counts_as_none() -> None:
    denied = PairState(consent={"utility": CategoryConsent(CategoryState.DENIED, NOW)})
    state, _ = apply(denied, "deny", ("utility",), now=NOW)
    assert state.category("utility") == CategoryConsent(
        CategoryState.DENIED, NOW + limits.CONSENT_COOLDOWN_MS
    )
    with pytest.raises(InvalidStatement):  # and revoking it is revoking what was never granted
        apply(denied, "revoke", ("utility",), now=NOW)


def test_a_partly_effective_statement_is_refused_whole() -> None:
    granted, _ = apply(INITIAL, "grant", ("utility",))
    with pytest.raises(InvalidStatement):
        apply(granted, "grant", ("utility", "marketing"))


def user_chat(state: PairState, *, maximum: int = limits.MESSAGE_REQUEST_MAX):
    return may_deliver(
        sender="alice",
        recipient="bob",
        sender_kind="user",
        recipient_kind="user",
        request="chat",
        state=state,
        now=NOW,
        message_request_max=maximum,
    )


def test_a_chat_to_a_user_who_never_wrote_back_is_a_message_request() -> None:
    first = user_chat(INITIAL)
    assert (
        first.allowed and first.first_contact and first.message_request and first.writer == "alice"
    )
    state = after_accept(INITIAL, first, NOW, limits.SERVICE_WINDOW_MS)
    assert state.wrote == {"alice"} and state.requests == 1
    second = user_chat(state)
    assert (
        second.allowed
        and second.message_request
        and not second.first_contact
        and second.writer is None
    )
    full = PairState(wrote=frozenset({"alice"}), requests=3)
    assert user_chat(full, maximum=3).verdict is Verdict.REFUSE
    assert user_chat(full, maximum=4).allowed


def test_once_the_recipient_wrote_chats_are_unlimited_and_change_nothing() -> None:
    answered = PairState(wrote=frozenset({"alice", "bob"}), requests=limits.MESSAGE_REQUEST_MAX)
    decision = user_chat(answered)
    assert decision.allowed and not decision.message_request
    assert after_accept(answered, decision, NOW, limits.SERVICE_WINDOW_MS) is answered
    # Bob wrote first: Alice's answer is no request, and makes her a writer.
    answer = user_chat(PairState(wrote=frozenset({"bob"})))
    assert answer.allowed and not answer.message_request and answer.writer == "alice"


def test_an_unverified_business_may_ask_only_users_who_wrote_or_granted() -> None:
    cats = frozenset({"utility"})
    assert decide("consent_request", categories=cats, verified=False).verdict is Verdict.REFUSE
    assert decide("bundle_fetch", verified=False).verdict is Verdict.REFUSE
    assert decide("consent_request", categories=cats, verified=True).allowed
    wrote = PairState(wrote=frozenset({"user"}))
    assert decide("consent_request", wrote, categories=cats, verified=False).allowed
    granted = PairState(consent={"marketing": CategoryConsent(CategoryState.GRANTED)})
    assert decide("consent_request", granted, categories=cats, verified=False).allowed
    # The business having written (a service reply) is no invitation.
    replied = PairState(wrote=frozenset({"business"}))
    assert (
        decide("consent_request", replied, categories=cats, verified=False).verdict
        is Verdict.REFUSE
    )


def test_a_stranger_is_whom_the_recipient_never_wrote_to_and_gave_nothing() -> None:
    """SPEC §6.3: contacts and consented businesses are no strangers."""
    assert is_stranger(INITIAL, "spammer", "bob")
    assert not is_stranger(PairState(wrote=frozenset({"bob"})), "alice", "bob")
    assert is_stranger(PairState(wrote=frozenset({"alice"})), "alice", "bob")  # she wrote, he not
    granted = PairState(consent={"utility": CategoryConsent(CategoryState.GRANTED)})
    assert not is_stranger(granted, "airline", "bob")
    revoked = PairState(consent={"utility": CategoryConsent(CategoryState.REVOKED, NOW + 1)})
    assert is_stranger(revoked, "airline", "bob")


# --- A statement's effect, as a business folds its receipts (SPEC §7.5) ---------------------


def effect(
    state: PairState,
    action: str,
    categories: tuple[str, ...] = (),
    *,
    signer: str = "alice",
    user_blocks_business: bool = False,
    now: int = NOW,
):
    return accepted_effect(
        state,
        action=action,
        signer=signer,
        categories=frozenset(categories),
        signer_is_user_blocking_business=user_blocks_business,
        now=now,
        cooldown_ms=limits.CONSENT_COOLDOWN_MS,
    )


def test_each_action_leads_to_one_state_whatever_it_comes_from() -> None:
    for start, moves in CONSENT_TRANSITIONS.items():
        for action, new in moves.items():
            assert new is ACTION_STATES[action], (start, action)


def _pair_states() -> list[PairState]:
    """Both categories in every state (cooldowns running and ended), every blocker, a
    pending request or none: 216 pair states."""
    consents = [None, CategoryConsent(CategoryState.GRANTED)] + [
        CategoryConsent(kind, until) for kind in (CategoryState.DENIED, CategoryState.REVOKED)
        for until in (NOW + 1, NOW)
    ]  # fmt: skip
    return [
        PairState(
            consent={c: v for c, v in (("utility", u), ("marketing", m)) if v is not None},
            blockers=blockers, pending=pending,
        )
        for u in consents for m in consents
        for blockers in (frozenset(), frozenset({"alice"}), frozenset({"shop"}))
        for pending in (frozenset(), frozenset({"utility"}))
    ]  # fmt: skip


def test_a_statement_the_table_accepts_has_the_same_effect_either_way() -> None:
    """Differential: wherever :func:`apply_statement` accepts, :func:`accepted_effect`
    (which does not ask the table) leaves the same state and purge."""
    moves = [(a, cats, "alice", False) for a in ("grant", "deny", "revoke")
             for cats in (("utility",), ("marketing",), ("utility", "marketing"))]  # fmt: skip
    moves += [
        (a, (), signer, signer == "alice")
        for a in ("block", "unblock")
        for signer in ("alice", "shop")
    ]
    accepted = 0
    for state in _pair_states():
        for action, cats, signer, user_blocks in moves:
            try:
                expected = apply(
                    state, action, cats, signer=signer, user_blocks_business=user_blocks
                )
            except InvalidStatement:
                continue
            accepted += 1
            assert (
                effect(state, action, cats, signer=signer, user_blocks_business=user_blocks)
                == expected
            ), (state, action, cats, signer)
    # 1,004 of the 2,808 pairs of a state and a move (1,290 before a signer that blocks
    # its target was refused consent statements, T54).
    assert accepted > 1000, accepted


def test_a_revoke_without_its_grant_revokes_what_it_names() -> None:
    """What a business may hold (SPEC §7.5): utility's grant, then a revoke of utility
    and marketing whose grant of marketing was withdrawn before it was delivered. The
    table refuses the revoke whole; its effect revokes both."""
    state, _ = apply(INITIAL, "grant", ("utility",))
    with pytest.raises(InvalidStatement):
        apply(state, "revoke", ("utility", "marketing"))
    after, purge = effect(state, "revoke", ("utility", "marketing"))
    revoked = CategoryConsent(CategoryState.REVOKED, NOW + limits.CONSENT_COOLDOWN_MS)
    assert after.consent == {"utility": revoked, "marketing": revoked}
    assert after.granted() == frozenset()
    assert purge.notification_categories == {"utility", "marketing"}
