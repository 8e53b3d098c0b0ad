"""How much of a listing the client takes (client/statements.py, SPEC §7.6, T56).

T55 refused a STATEMENTS cursor that does not advance; one that does can still be made
endless with invented statements. Over the in-memory relay of :mod:`.fake_relay`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from blindrelay.client.sdk import Client
from blindrelay.client.statements import MAX_IN_FORCE
from blindrelay.protocol import frames, limits
from blindrelay.protocol.crypto.keys import IdentityKeyPair
from blindrelay.protocol.errors import UnexpectedFrame
from blindrelay.protocol.signed import make_statement

from ..relays import T0
from .fake_relay import RELAY_KEY, URL, FakeRelay, RelayEnd, answer_plainly
from .harness import online, within

PAGE = limits.MAX_LISTED_STATEMENTS

INVENTED = make_statement(
    "grant", signer="nobody", signer_key=IdentityKeyPair.from_seed(b"\x72" * 32).public,
    target="alice", relay_key=RELAY_KEY.verify_key.encode(), now_ms=T0, rng=os.urandom,
    categories=("utility",),
).sign(IdentityKeyPair.from_seed(b"\x72" * 32).sign)  # fmt: skip
"""A receipt from a customer alice never heard of: shown ``verified=False``."""


def listing(pages: int, asked: list[int]) -> Callable[[RelayEnd, frames.Frame], None]:
    """A relay listing ``pages`` full pages under a cursor that advances, the last
    without ``next``, and answering the rest plainly."""

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.StatementsList):
            answer_plainly(end, frame)
            return
        asked.append(frame.after)
        more = len(asked) < pages
        end.send(frames.Statements(
            re=frame.id, statements=(INVENTED,) * PAGE, next=frame.after + PAGE if more else None,
        ))  # fmt: skip

    return answer


async def business(relay: FakeRelay) -> Client:
    return await online(URL, "alice", "business", open_transport=relay.open)


async def test_a_listing_past_what_an_account_holds_in_force_is_refused() -> None:
    """T56: a relay paging invented statements under a cursor that advances had
    ``statements()`` keep every page for as long as it went on: memory grew with what the
    relay sent (~770 bytes a statement kept), and a relay that never ends the listing
    never let the call return. Here it ends after 510 pages (30,600 statements); the
    call returned them all. Now the listing is refused, as the relay's fault, past
    ``MAX_IN_FORCE`` (30,000) statements: asked no further."""
    relay = FakeRelay()
    alice = await business(relay)
    asked: list[int] = []
    relay.answer = listing(MAX_IN_FORCE // PAGE + 10, asked)
    with pytest.raises(UnexpectedFrame, match="more than 30000 statements"):
        await within(alice.statements(), 30)
    assert len(asked) == MAX_IN_FORCE // PAGE + 1
    await alice.close()


async def test_a_listing_of_at_most_the_bound_is_taken_whole() -> None:
    """The honest case, and the caller's own bound: a listing of ``max_statements`` is
    returned whole; one a page longer is refused."""
    relay = FakeRelay()
    alice = await business(relay)
    asked: list[int] = []
    relay.answer = listing(3, asked)
    listed = await within(alice.statements(max_statements=3 * PAGE))
    assert len(listed) == 3 * PAGE and not any(held.verified for held in listed)
    asked.clear()
    with pytest.raises(UnexpectedFrame, match="more than 120 statements"):
        await within(alice.statements(max_statements=2 * PAGE))
    assert asked == [0, PAGE, 2 * PAGE]
    await alice.close()


CAROL = IdentityKeyPair.from_seed(b"\x73" * 32)


def carols_grant(target: str) -> bytes:
    """A real grant of carol's, signed with her key, to ``target``."""
    return make_statement(
        "grant", signer="carol", signer_key=CAROL.public, target=target,
        relay_key=RELAY_KEY.verify_key.encode(), now_ms=T0, rng=os.urandom,
        categories=("utility",),
    ).sign(CAROL.sign)  # fmt: skip


async def test_a_listed_statement_that_names_us_neither_as_signer_nor_target_is_not_verified() -> (
    None
):
    """T59: the listing holds "the statements in force that we signed or that name us"
    (SPEC §7.6), yet any statement that verified against its signer's pinned key showed
    ``verified=True``: a relay could list carol's real grant to another business in
    alice's listing, and a business rebuilding its opt-ins from ``statements()`` would
    count carol as its own customer's consent. Now such a statement is ``verified=False``;
    carol's grant to alice itself still verifies."""
    relay = FakeRelay()
    alice = await business(relay)
    alice.trust.pin("carol", CAROL.public)
    mine, elsewhere = carols_grant("alice"), carols_grant("other-shop")

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if isinstance(frame, frames.StatementsList):
            end.send(frames.Statements(re=frame.id, statements=(mine, elsewhere), next=None))
        else:
            answer_plainly(end, frame)

    relay.answer = answer
    listed = await within(alice.statements())
    assert [(held.signed, held.verified) for held in listed] == [(mine, True), (elsewhere, False)]
    await alice.close()
