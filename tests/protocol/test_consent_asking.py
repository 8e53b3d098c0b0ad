"""SPEC §7.3: what a business may ask for and when it may fetch a user's bundle, category
by category — the rules the spec's table (one category at a time, or all) cannot tell
apart. Each test was written against a mutant of ``protocol/consent.py`` that the
other tests let pass."""

from __future__ import annotations

from blindrelay.protocol import limits
from blindrelay.protocol.consent import (
    INITIAL,
    CategoryConsent,
    CategoryState,
    PairState,
    Request,
    Verdict,
    may_deliver,
)

NOW = 1_800_000_000_000
BOTH = frozenset({"utility", "marketing"})


def business_asks(state: PairState, request: Request, categories: frozenset[str] = frozenset()):
    return may_deliver(
        sender="shop", recipient="bob", sender_kind="business", recipient_kind="user",
        request=request, state=state, now=NOW, categories=categories, sender_verified=True,
    )  # fmt: skip


def test_a_request_naming_a_granted_category_is_refused_whole() -> None:
    """SPEC §7.3, *asking allowed*: "none of the asked categories is granted or in a
    cooldown that has not ended" — none, so asking for both with one granted (or cooling
    down) is refused, and the other may be asked for alone."""
    granted = PairState(consent={"utility": CategoryConsent(CategoryState.GRANTED)})
    denied = PairState(consent={"utility": CategoryConsent(CategoryState.DENIED, NOW + 1)})
    for state in (granted, denied):
        assert business_asks(state, Request.CONSENT_REQUEST, BOTH).verdict is Verdict.REFUSE
        marketing = business_asks(state, Request.CONSENT_REQUEST, frozenset({"marketing"}))
        assert marketing.allowed and marketing.sets_pending == frozenset({"marketing"})


def test_a_request_for_no_category_is_refused() -> None:
    """A consent request asks for 1 … MAX_CATEGORIES categories (SPEC §6.1): one for none
    would set a pending request that no statement could answer."""
    assert business_asks(INITIAL, Request.CONSENT_REQUEST).verdict is Verdict.REFUSE


def test_a_business_that_may_ask_for_one_category_may_fetch_the_bundle() -> None:
    """Bundle fetch: "… or may ask and asking allowed for *some* category": with utility
    denied and still cooling down, marketing may be asked for, so the bundle is served;
    with both cooling down it is not."""
    one = PairState(consent={"utility": CategoryConsent(CategoryState.DENIED, NOW + 1)})
    assert business_asks(one, Request.BUNDLE_FETCH).allowed
    both = PairState(
        consent={c: CategoryConsent(CategoryState.DENIED, NOW + 1) for c in limits.CATEGORIES}
    )
    assert business_asks(both, Request.BUNDLE_FETCH).verdict is Verdict.REFUSE
