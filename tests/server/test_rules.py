"""server/store/rules.py: the decisions inside the store's operations, without a store.

These are what a second back end reuses; the SQLite operations that call them are
tested through the relay (test_delivery, test_queue_shares, test_statements, …)."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindrelay.protocol import limits
from blindrelay.protocol.consent import (
    INITIAL,
    REFUSE,
    CategoryConsent,
    CategoryState,
    Meter,
    PairState,
    Request,
    Verdict,
)
from blindrelay.protocol.errors import Forbidden, InvalidStatement, RecipientUnavailable
from blindrelay.protocol.signed import ConsentStatement
from blindrelay.protocol.transparency.bills import month_of, month_span
from blindrelay.server.config import RelayConfig
from blindrelay.server.delivery import send_rules
from blindrelay.server.store import Account
from blindrelay.server.store.rules import (
    CONSENT_WHILE_BLOCKING,
    HOUR_MS,
    QueueShares,
    StatementEffect,
    bucket_full_at,
    bucket_tokens,
    by_pair,
    check_block_targets,
    check_statement,
    consent_as_the_block_left_it,
    envelope_digest,
    judge,
    judge_send,
    metered_business,
    needs_badge,
    pair_after_send,
    queue_full,
    refuse_unless_allowed,
    revokes_on_unblock,
    shares_matter,
    statement_effect,
)
from blindrelay.server.store.sqlite.database import connect

RULES = send_rules(RelayConfig())._replace(
    queue_cap=10, queue_share_per_sender=4, queue_share_strangers=6
)
NOW = 1_700_000_000_000


def chat(state: PairState = INITIAL, recipient_kind: str | None = "user", sender: str = "alice"):
    return judge_send(
        RULES, sender, "user", "bob", recipient_kind, Request.CHAT, None, frozenset(), state, NOW
    )


def test_a_chat_to_an_unknown_handle_is_refused_but_reads_the_first_contact_budget() -> None:
    """SPEC §7.7: the same work as for a new stranger — unless the sender already wrote
    to someone in this pair (then a real recipient costs no budget either)."""
    assert chat(recipient_kind=None) == (REFUSE, False, True)  # (decision, stranger, probe)
    wrote = chat(PairState(wrote=frozenset({"alice"})), recipient_kind=None)
    assert wrote == (REFUSE, False, False)


def test_a_chat_refused_by_a_block_reads_the_first_contact_budget_like_one_to_nobody() -> None:
    """SPEC §7.7 (threat model T71): "blocked the sender" and "does not exist" are the same
    work, so a user's chat refused by a block — either side's, to a user or a business —
    reads the budget an unknown handle's does, while neither has written. A sender that
    wrote knows the account exists: then neither reads it."""
    nobody = chat(recipient_kind=None)
    for blocker in ("bob", "alice"):
        blocked = PairState(blockers=frozenset({blocker}))
        for kind in ("user", "business", None):
            assert chat(blocked, recipient_kind=kind) == nobody, (blocker, kind)
    wrote = PairState(blockers=frozenset({"bob"}), wrote=frozenset({"alice"}))
    assert chat(wrote) == (REFUSE, False, False) == chat(wrote, recipient_kind=None)


def test_a_first_chat_between_users_is_a_strangers_first_contact() -> None:
    decision, stranger, probe = chat()
    assert decision.verdict is Verdict.ALLOW and decision.first_contact
    assert stranger and not probe
    decision, stranger, _ = chat(PairState(wrote=frozenset({"bob"})))
    assert decision.verdict is Verdict.ALLOW and not stranger


def test_a_business_recipient_has_no_strangers_pool() -> None:
    """SPEC §6.3: a business's customers are all strangers to it."""
    decision, stranger, _ = chat(recipient_kind="business")
    assert decision.verdict is Verdict.ALLOW and not stranger


def test_a_business_the_user_granted_is_no_stranger() -> None:
    """SPEC §6.3: "A sender is a stranger to a user who has not written to it (§7.2) and
    has granted it no category": a notification under a grant stays out of the strangers'
    pool, a verified business's cold consent request is in it."""
    granted = PairState(consent={"utility": CategoryConsent(CategoryState.GRANTED)})
    decision, stranger, _ = judge_send(
        RULES, "shop", "business", "bob", "user", Request.NOTIFICATION, "utility",
        frozenset(), granted, NOW,
    )  # fmt: skip
    assert decision.verdict is Verdict.ALLOW and not stranger
    decision, stranger, _ = judge_send(
        RULES, "shop", "business", "bob", "user", Request.CONSENT_REQUEST, None,
        frozenset({"utility"}), INITIAL, NOW, verified=True,
    )  # fmt: skip
    assert decision.verdict is Verdict.ALLOW and stranger


def test_the_queue_is_full_at_the_cap_or_at_a_share() -> None:
    assert not shares_matter(RULES, 3) and shares_matter(RULES, 4) and not shares_matter(RULES, 10)
    assert not queue_full(RULES, "alice", True, 3, None)
    assert queue_full(RULES, "alice", False, 10, None)  # the cap needs no shares
    shares = QueueShares(floor=4, strangers=2, senders={"alice": 4, "carol": 1})
    assert queue_full(RULES, "alice", False, 5, shares)  # alice's own share
    assert not queue_full(RULES, "carol", True, 5, shares)
    shares.change("dave", True, 4)
    assert queue_full(RULES, "carol", True, 9, shares)  # the strangers' pool: 6
    assert not queue_full(RULES, "carol", False, 9, shares)  # a contact is not in it


def test_an_accepted_envelope_changes_the_pair_and_is_metered_for_the_business() -> None:
    first, _, _ = chat()
    after = pair_after_send(RULES, INITIAL, first, NOW)
    assert after is not None and "alice" in after.wrote
    assert first.meter is None
    granted = PairState(consent={"utility": _granted()})
    notify = judge("shop", "business", "bob", "user", Request.NOTIFICATION, granted, NOW,
                   category="utility")  # fmt: skip
    assert pair_after_send(RULES, granted, notify, NOW) is None  # a notification: nothing new
    assert (
        notify.meter is Meter.NOTIFICATION and metered_business("shop", "business", "bob") == "shop"
    )
    reply = judge("bob", "user", "shop", "business", Request.CHAT, INITIAL, NOW)
    assert reply.meter is Meter.USER_INITIATED and metered_business("bob", "user", "shop") == "shop"


def _granted():
    from blindrelay.protocol.consent import CategoryConsent

    return CategoryConsent(CategoryState.GRANTED, 0)


def test_pair_dependent_refusals_are_the_bare_codes() -> None:
    with pytest.raises(RecipientUnavailable):
        refuse_unless_allowed(REFUSE)
    forbidden = judge("bob", "user", "alice", "user", Request.NOTIFICATION, INITIAL, NOW)
    with pytest.raises(Forbidden):
        refuse_unless_allowed(forbidden)
    assert needs_badge("business", Request.CONSENT_REQUEST)
    assert not needs_badge("business", Request.NOTIFICATION) and not needs_badge(
        "user", Request.BUNDLE_FETCH
    )


def test_a_budget_refills_at_its_rate_and_is_full_again_when_it_says() -> None:
    assert bucket_tokens(None, 2.0, 5, NOW) == 5.0
    assert bucket_tokens((0.0, NOW), 2.0, 5, NOW + HOUR_MS) == 2.0
    assert bucket_tokens((4.0, NOW), 2.0, 5, NOW + HOUR_MS) == 5.0  # never past the burst
    assert bucket_tokens((1.0, NOW), 2.0, 5, NOW - 1) == 1.0  # a clock step back refills nothing
    full_at = bucket_full_at(1.0, 2.0, 5, NOW)
    assert full_at == NOW + 2 * HOUR_MS and bucket_tokens((1.0, NOW), 2.0, 5, full_at) == 5.0


def _statement(action: str, signer: str = "bob", target: str = "shop", **fields: object):
    values: dict[str, object] = {
        "v": 1, "signer": signer, "signer_key": b"b" * 32, "target": target, "action": action,
        "categories": ("utility",) if action in ("grant", "deny", "revoke") else None,
        "issued_at": NOW, "nonce": b"n" * 16, "relay_key": b"r" * 32,
    }  # fmt: skip
    values.update(fields)
    return ConsentStatement(**values)  # type: ignore[arg-type]


def test_statement_checks_need_the_current_key_a_user_signer_and_a_business_target() -> None:
    bob = Account("bob", "user", b"b" * 32)
    shop = Account("shop", "business", b"s" * 32)
    check_statement(_statement("grant"), bob, shop)
    with pytest.raises(InvalidStatement):
        check_statement(_statement("grant"), Account("bob", "user", b"x" * 32), shop)
    with pytest.raises(InvalidStatement):
        check_statement(_statement("grant", signer="shop", target="bob"), shop, bob)
    for target in (None, Account("carol", "user", b"c" * 32)):  # one refusal for both
        with pytest.raises(RecipientUnavailable):
            check_statement(_statement("grant", target="carol"), bob, target)
    check_statement(_statement("block", target="nobody"), bob, None)  # kept like any other
    check_block_targets(None, 1)  # already on record
    check_block_targets(limits.MAX_BLOCK_TARGETS - 1, limits.MAX_BLOCK_TARGETS)
    with pytest.raises(InvalidStatement):
        check_block_targets(limits.MAX_BLOCK_TARGETS, limits.MAX_BLOCK_TARGETS)


def _effect(
    action: str, target_kind: str, state: PairState, *, target: str = "shop",
    block_to_target: bool = False,  # only an unblock reads it
    registered_at: int | None = NOW - 1, signer_kind: str = "user",
) -> StatementEffect:  # fmt: skip
    return statement_effect(
        _statement(action, target=target), signer_kind, target_kind, state, NOW, 1000,
        block_to_target=block_to_target, target_registered_at=registered_at,
    )  # fmt: skip


def test_a_user_blocking_a_business_revokes_everything_purges_and_forwards_nothing() -> None:
    effect = _effect("block", "business", INITIAL)
    assert "bob" in effect.state.blockers and effect.purge.everything_from_target
    assert all(c.state is CategoryState.REVOKED for c in effect.state.consent.values())
    assert effect.to_target and effect.forward
    blocked = PairState(blockers=frozenset({"shop"}))
    grant = _effect("grant", "business", blocked)
    assert grant.to_target and not grant.forward  # the target blocks the signer
    to_user = _effect("block", "user", INITIAL, target="carol")
    assert not to_user.to_target and not to_user.forward
    with pytest.raises(InvalidStatement):  # no entry in the table: unblock without a block
        _effect("unblock", "business", INITIAL, block_to_target=True)


def test_an_unblock_goes_where_the_block_it_lifts_went() -> None:
    """SPEC §7.5, T47: the unblock of a block made before the business registered is
    neither forwarded nor listed to it (it would tell the business of the block)."""
    bob_blocks = PairState(blockers=frozenset({"bob"}))
    went = _effect("unblock", "business", bob_blocks, block_to_target=True)
    assert went.to_target and went.forward and not went.state.blockers
    kept = _effect("unblock", "business", bob_blocks, block_to_target=False)
    assert not kept.to_target and not kept.forward and not kept.state.blockers
    both = PairState(blockers=frozenset({"bob", "shop"}))
    held = _effect("unblock", "business", both, block_to_target=True)
    assert held.to_target and not held.forward  # held back: the target blocks bob
    to_user = _effect("unblock", "user", bob_blocks, target="carol", block_to_target=True)
    assert not to_user.to_target and not to_user.forward  # a user is never told


def test_the_unblock_of_a_block_made_before_the_business_registered_revokes_from_then() -> None:
    """SPEC §7.4, T57: a user's block of a handle nobody held takes effect on the business
    that registers it as a block made then: the unblock that lifts it leaves every
    category revoked until the registration plus the cooldown, as a block made at the
    registration would have, and clears a pending request."""
    bob_blocks = PairState(blockers=frozenset({"bob"}), pending=frozenset({"utility"}))
    lifted = _effect("unblock", "business", bob_blocks, registered_at=NOW - 400)
    assert lifted.state.consent == {
        c: CategoryConsent(CategoryState.REVOKED, NOW - 400 + 1000) for c in limits.CATEGORIES
    }
    assert not lifted.state.pending and not lifted.state.blockers
    assert not lifted.to_target and not lifted.forward
    # Not the unblock of a block that went to the business: that block revoked already.
    went = _effect("unblock", "business", bob_blocks, block_to_target=True, registered_at=None)
    assert went.state.consent == {} and went.state.pending == frozenset({"utility"})
    # Nor a block of a user, nor a business's block: neither revokes anything.
    for signer_kind, target_kind in (("user", "user"), ("business", "business")):
        other = _effect(
            "unblock", target_kind, bob_blocks, registered_at=None, signer_kind=signer_kind
        )
        assert other.state.consent == {}
    assert revokes_on_unblock(_statement("unblock"), "user", "business", False)
    assert not revokes_on_unblock(_statement("block"), "user", "business", False)
    with pytest.raises(ValueError, match="before the business registered"):
        _effect("unblock", "business", bob_blocks, registered_at=None)


def test_the_envelope_digest_keeps_fields_apart() -> None:
    base = envelope_digest("bob", "chat", None, None, b"xy")
    assert base == envelope_digest("bob", "chat", None, None, b"xy")
    assert base != envelope_digest("bobc", "hat", None, None, b"xy")
    assert envelope_digest("bob", "notification", "a", None, b"") != envelope_digest(
        "bob", "notification", None, ["a"], b""
    )


def test_metering_months_are_utc_calendar_months() -> None:
    start, end, month = month_span(NOW)
    assert month == month_of(NOW) == month_of(start) == month_of(end - 1) == "2023-11"
    assert month_of(end) == "2023-12" and month_span(end)[0] == end


# --- rules no other test held (mutation analysis of store/rules.py) ---------------------


def test_a_bundle_fetch_of_an_unknown_handle_is_refused_before_any_other_read() -> None:
    """SPEC §7.7: an unknown handle is refused on the pair state alone, as a user that
    may not be fetched is — even where a stranger's bundle would be served (a verified
    business, any user): no prekey lookup for one and not the other."""
    for requester, kind in (("shop", "business"), ("alice", "user")):
        fetch = judge(requester, kind, "ghost", None, Request.BUNDLE_FETCH, INITIAL, NOW,
                      verified=True)  # fmt: skip
        assert fetch == REFUSE, requester


def test_only_a_users_chat_to_an_unknown_handle_reads_the_first_contact_budget() -> None:
    """SPEC §7.7: the read is what a new stranger costs, and only a user's chat opens a
    conversation with one: a business's chat, or a user's notification, to an unknown
    handle reads no budget, as none to an existing account does."""
    for sender, kind, request in (
        ("shop", "business", Request.CHAT), ("shop", "business", Request.NOTIFICATION),
        ("alice", "user", Request.NOTIFICATION),
    ):  # fmt: skip
        judged = judge_send(
            RULES, sender, kind, "ghost", None, request, "utility", frozenset(), INITIAL, NOW
        )
        assert judged == (REFUSE, False, False), (kind, request)


def test_shares_count_strangers_only_and_an_acknowledgement_gives_room_back() -> None:
    """SPEC §6.3.5: only strangers' envelopes fill the strangers' pool, and both shares
    count *undelivered* envelopes: one acknowledged (a change of -1) leaves them."""
    shares = QueueShares(floor=4, strangers=0, senders={})
    shares.change("friend", False, 5)
    assert shares.strangers == 0 and shares.senders == {"friend": 5}
    assert not queue_full(RULES, "carol", True, 5, shares)
    shares.change("carol", True, 6)
    assert queue_full(RULES, "dave", True, 9, shares)  # the pool is full
    shares.change("carol", True, -3)
    assert shares.strangers == 3 and shares.senders["carol"] == 3
    assert not queue_full(RULES, "carol", True, 8, shares)


def test_the_window_a_users_chat_opens_is_the_relays_configured_one() -> None:
    """SPEC §7.3, §10: window_until := now + SERVICE_WINDOW_MS, the relay's setting."""
    rules = RULES._replace(service_window_ms=5_000)
    decision = judge("bob", "user", "shop", "business", Request.CHAT, INITIAL, NOW)
    after = pair_after_send(rules, INITIAL, decision, NOW)
    assert after is not None and after.window_until == NOW + 5_000


def test_the_envelope_digest_tells_intent_category_and_categories_apart() -> None:
    """SPEC §6.3.2: a resend is one with "the same to, intent, category, categories and
    body"; any other is a reuse (403)."""
    digests = {
        envelope_digest("bob", "chat", None, None, b"x"),
        envelope_digest("bob", "notification", None, None, b"x"),
        envelope_digest("bob", "notification", "utility", None, b"x"),
        envelope_digest("bob", "notification", "marketing", None, b"x"),
        envelope_digest("bob", "consent_request", None, ["utility"], b"x"),
        envelope_digest("bob", "consent_request", None, ["utility", "marketing"], b"x"),
        envelope_digest("bob", "chat", None, None, b"y"),
        envelope_digest("carol", "chat", None, None, b"x"),
    }
    assert len(digests) == 8


def test_an_upgrade_revokes_what_the_statements_named_from_the_block() -> None:
    """Threat model T54 (upgrades): each category the cleared statements named, "as the
    block, accepted at ``blocked_at``, left it" — revoked until the block plus the
    cooldown — and no other; the rows grouped by pair, each with its block's time."""
    rows = [
        ("bob", "shop", "consent:utility", 7, 1_000),
        ("bob", "shop", "consent:marketing", 9, 1_000),
        ("carol", "shop", "consent:utility", 8, 2_000),
    ]
    assert by_pair(rows) == {
        ("bob", "shop"): ({"utility", "marketing"}, 1_000),
        ("carol", "shop"): ({"utility"}, 2_000),
    }
    granted = CategoryConsent(CategoryState.GRANTED)
    state = PairState(consent={"utility": granted, "marketing": granted})
    left = consent_as_the_block_left_it(state, {"utility"}, 2_000)
    revoked = CategoryConsent(CategoryState.REVOKED, 2_000 + limits.CONSENT_COOLDOWN_MS)
    assert left.consent == {"utility": revoked, "marketing": granted}


def test_an_upgrade_finds_only_consent_given_under_the_block_in_force(tmp_path: Path) -> None:
    """Threat model T54 (upgrades): :data:`CONSENT_WHILE_BLOCKING` on the relay's tables
    finds bob's grant made after his block, with the block's time — not dave's made before
    his block, nor erin's made after she lifted hers (her unblock is in force in the block
    family), nor carol's made without one."""
    db = connect(tmp_path / "relay.db")
    said = [
        ("bob", "block", None), ("bob", "grant", "utility"),
        ("dave", "grant", "utility"), ("dave", "block", None),
        ("erin", "block", None), ("erin", "unblock", None), ("erin", "grant", "utility"),
        ("carol", "grant", "utility"),
    ]  # fmt: skip
    in_force: dict[tuple[str, str], int] = {}
    with db.atomic():
        for seq, (signer, action, category) in enumerate(said, start=1):
            db.execute(
                "INSERT INTO statements (seq, signer, target, action, categories, issued_at,"
                " accepted_at, nonce, signed) VALUES (?, ?, 'shop', ?, ?, 0, ?, ?, x'00')",
                (seq, signer, action, category, 100 * seq, seq.to_bytes(16, "big")),
            )
            in_force[(signer, "block" if category is None else f"consent:{category}")] = seq
        for (signer, family), seq in in_force.items():
            db.execute(
                "INSERT INTO statements_in_force (signer, target, family, seq, to_target)"
                " VALUES (?, 'shop', ?, ?, 1)",
                (signer, family, seq),
            )
    found = [tuple(row) for row in db.execute(CONSENT_WHILE_BLOCKING).fetchall()]
    assert found == [("bob", "shop", "consent:utility", 2, 100)]
